"""Generate docs/recipes.md from the pydantic recipe schema and every strategy's typed config (a test checks that the
file is in sync).

    python scripts/gen_recipe_docs.py            # rewrite docs/recipes.md
    python scripts/gen_recipe_docs.py --check    # exit 1 if docs/recipes.md is stale
"""
from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel

# Document the schema of the checkout this script lives in (not whichever posttrain is installed: with git
# worktrees the editable install may point at another checkout).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from posttrain.recipes import schema  # noqa: E402
from posttrain.weighting.catalog import reference_markdown  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"

HEADER = """# Recipe reference

A recipe is one YAML file. Every key is validated: an unknown key, a wrong type or an out-of-range value stops
`posttrain run` / `posttrain validate` with one line naming the key path, exit code 2, before anything is written.
Command-line overrides use dotted keys, list items by index:

```bash
posttrain run recipes/quickstart.yaml train.max_steps=5 output.dir=/tmp/x rewards.0.weight=2
```

Keys under `train:` are TRL's own config fields (`trl.GRPOConfig` for `algorithm: grpo`, `trl.DPOConfig`
for `dpo` / `reward_model+dpo`; `reward_model.train:` takes `trl.RewardConfig` fields); they are checked
against that dataclass (name and type) and passed through. posttrain sets `output_dir`, `seed`, `report_to`,
`logging_steps`, `deepspeed`, `use_vllm` and `vllm_mode` from its own sections, and on CPU defaults
`bf16: false`, `gradient_checkpointing: false`, `use_cpu: true`, `save_strategy: "no"` unless the recipe sets them.

This file is generated from `posttrain/recipes/schema.py` by `python scripts/gen_recipe_docs.py`.
"""


def _type_name(ann) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:  # a tagged union member: its type
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in inner) + (" \\| null" if len(inner) < len(args) else "")
    if origin in (list, typing.List):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"section `{ann.__name__}`"
    return getattr(ann, "__name__", str(ann))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        v = field.default_factory()
        return "`" + repr(v if not isinstance(v, BaseModel) else "{…}") + "`"
    return f"`{field.default!r}`"


def _section(model: type[BaseModel], title: str) -> list[str]:
    lines = [f"## `{title}`", ""]
    if model.__doc__ and model is not schema.Recipe:
        lines += [model.__doc__.strip().splitlines()[0], ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        desc = (f.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {_type_name(f.annotation)} | {_default(f)} | {desc} |")
    return lines + [""]


def render() -> str:
    parts = [HEADER]
    sections = [
        (schema.Recipe, "top level"), (schema.ModelSection, "model"), (schema.LoraSection, "model.lora"),
        (schema.DataSection, "data"), (schema.DatasetSpec, "data.train / data.eval"),
        (schema.MixtureSpec, "data.train (a mixture)"), (schema.MixtureEntry, "data.train.mixture[]"),
        (schema.EvalMixtureSpec, "data.eval (a mixture)"), (schema.EvalMixtureEntry, "data.eval.mixture[]"),
        (schema.RewardSpec, "rewards[]"), (schema.WeightingSection, "weighting"),
        (schema.RewardModelSection, "reward_model"),
        (schema.RolloutSection, "rollout"),
        (schema.DynamicSamplingSection, "rollout.dynamic_sampling"), (schema.ReliftSection, "relift"),
        (schema.DistributedSection, "distributed"),
        (schema.EvalSection, "eval"), (schema.OutputSection, "output"),
    ]
    for model, title in sections:
        parts += _section(model, title)
    parts += ["", reference_markdown().replace("# Strategy reference", "# Strategy reference (generated from each "
                                                "strategy's typed config)", 1)]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.exists() and OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
