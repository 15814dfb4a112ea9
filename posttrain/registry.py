"""Name -> object registries, so recipes select losses, rewards and weighting strategies by name.

Users add their own with ``REGISTRY.register("name")(fn)`` or, from a recipe, by import path
``"my_pkg.my_module:my_fn"`` (resolved by :meth:`Registry.resolve`; only explicit import paths are imported).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterator


class RegistryError(KeyError):
    """Unknown name or unimportable path; the message is a complete one-line explanation."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Any] = {}

    def register(self, name: str, obj: Any = None):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: Any) -> Any:
            if name in self._items and self._items[name] is not o:
                raise RegistryError(f"{self.kind} '{name}' is already registered")
            self._items[name] = o
            return o

        return _add if obj is None else _add(obj)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str) -> Any:
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return import_path(name, self.kind)
        raise RegistryError(
            f"unknown {self.kind} '{name}'; known: {', '.join(self.names()) or '(none)'}; "
            f"or give an import path 'package.module:object'"
        )

    resolve = get


def import_path(path: str, kind: str = "object") -> Callable:
    """Import ``'package.module:attr'``. Errors are one line naming the path."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise RegistryError(f"{kind} import path '{path}' must look like 'package.module:object'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported in one line
        raise RegistryError(f"cannot import module '{module_name}' for {kind} '{path}': {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"module '{module_name}' has no attribute '{attr}' ({kind} '{path}')")
        obj = getattr(obj, part)
    return obj
