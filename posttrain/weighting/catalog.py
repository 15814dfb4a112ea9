"""Every registered strategy, by kind, with its arguments: for ``posttrain strategies`` and the generated reference.

Read from the strategies' own classes (their docstring's first line, ``cite``, and the fields of their pydantic
``Config``: type, default, help), so the listing and ``docs/recipes.md`` cannot drift from the code.
"""
from __future__ import annotations

import typing
from typing import List, Tuple

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from posttrain.weighting.protocol import HOOKS, KINDS, SECTIONS, implemented_hooks, registered


def strategy_rows() -> List[Tuple[str, str, str, str]]:
    """``(kind, name, aliases, one-line summary)`` of every built-in strategy (an alias is listed with its class)."""
    rows = []
    for kind in KINDS:
        by_class: dict = {}
        for name, cls in registered(kind).items():
            by_class.setdefault(cls, []).append(name)
        for cls, names in by_class.items():
            main = cls.name if cls.name in names else names[0]
            aliases = ", ".join(n for n in names if n != main)
            rows.append((kind, main, aliases, cls.summary()))
    return sorted(rows, key=lambda r: (KINDS.index(r[0]), r[1]))


def print_strategies(*, with_args: bool = False) -> None:
    """``posttrain strategies``: one line per strategy, grouped by kind (with ``with_args``, its arguments too)."""
    rows = strategy_rows()
    width = max(len(name) for _, name, _, _ in rows)
    for kind in KINDS:
        print(f"{kind} strategies ({SECTIONS[kind]}):")
        for k, name, aliases, summary in rows:
            if k != kind:
                continue
            print(f"  {name:<{width}}  {summary}" + (f" (alias: {aliases})" if aliases else ""))
            if with_args:
                for arg, typ, default, _ in config_rows(registered(kind)[name].Config):
                    print(f"  {'':<{width}}    {arg}: {typ.replace(chr(92), '')} = {default.strip('`') or '-'}")


def _type_name(ann) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in inner) + (" \\| null" if len(inner) < len(args) else "")
    if origin in (list, typing.List, tuple, typing.Tuple):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is typing.Annotated:
        return _type_name(args[0])
    return getattr(ann, "__name__", str(ann))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    if field.default is PydanticUndefined:
        return ""
    return f"`{field.default!r}`"


def config_rows(config: type[BaseModel]) -> List[Tuple[str, str, str, str]]:
    """``(argument, type, default, help)`` of a strategy's ``Config``."""
    return [(name, _type_name(f.annotation), _default(f), (f.description or "").replace("|", "\\|").replace("\n", " "))
            for name, f in config.model_fields.items()]


def reference_markdown() -> str:
    """The strategy reference section of ``docs/recipes.md``."""
    lines = ["# Strategy reference", "",
             "Every registered strategy with every argument (its typed config), by kind. A recipe selects one with "
             "`{name: <name>, <argument>: value, ...}` under the section named per kind; a user's own strategy is "
             "an import path `pkg.module:Class` (docs/strategies.md). `posttrain strategies` prints this list.", ""]
    for kind in KINDS:
        lines += [f"## {kind} strategies (`{SECTIONS[kind]}`)", "", f"Hooks: {', '.join(f'`{h}`' for h in HOOKS[kind])}.", ""]
        by_class: dict = {}
        for name, cls in registered(kind).items():
            by_class.setdefault(cls, []).append(name)
        for cls, names in sorted(by_class.items(), key=lambda kv: kv[0].name):
            alias = [n for n in names if n != cls.name]
            title = f"### `{cls.name}`" + (f" (alias {', '.join(f'`{a}`' for a in alias)})" if alias else "")
            lines += [title, "", cls.summary()]
            if cls.cite:
                lines += ["", f"Source: {cls.cite}."]
            hooks = [h for h in implemented_hooks(cls) if h in HOOKS[kind]]
            lines += ["", f"Hooks: {', '.join(f'`{h}`' for h in hooks)}.", ""]
            rows = config_rows(cls.Config)
            if rows:
                lines += ["| argument | type | default | meaning |", "|---|---|---|---|"]
                lines += [f"| `{a}` | {t} | {d} | {h} |" for a, t, d, h in rows]
            else:
                lines += ["No arguments."]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
