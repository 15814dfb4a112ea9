"""The comparison spec (YAML -> pydantic) and its plan: arms × seeds -> runs, each with its resolved recipe.

Every problem is a :class:`CompareError` whose text is one line naming the spec file and the key.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from posttrain.recipes.loader import RECIPES_DIR, RecipeError, _format_validation_error, load_recipe

COMPARE_DIR = RECIPES_DIR / "compare"
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# Overrides the harness sets itself for every run; a spec may not set them.
RESERVED = {"seed": "seeds", "output.dir": "runs_dir", "output.overwrite": "(always true)",
            "model.threads": "threads"}
# Keys of the resolved recipe that do not change a run's result: ignored by the reuse key. The checkpoint cadence is
# among them (resume is exact: tests/test_reliability.py), so a spec may add train.save_steps to make long runs
# resumable mid-run without invalidating the runs it already finished.
IGNORED_FOR_REUSE = ("output", "model.threads", "description", "train.save_steps", "train.save_strategy",
                     "train.save_total_limit")
EVAL_METRICS = ("accuracy", "mean_score", "truncated_fraction")


class CompareError(ValueError):
    """A bad spec or plan; ``str(err)`` is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PassAtK(_Strict):
    """pass@k from sampled completions of every held-out item (after training, from the saved model)."""

    k: int = Field(..., ge=1, description="k of pass@k.")
    samples: Optional[int] = Field(None, ge=1, description="Samples per item, n >= k (default k); the unbiased "
                                   "estimator 1 - C(n-c, k) / C(n, k) is used.")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature (top-p 1, top-k off).")
    max_new_tokens: Optional[int] = Field(None, gt=0, description="Default: the recipe's eval.max_new_tokens.")

    @model_validator(mode="after")
    def _n_ge_k(self):
        if self.samples is not None and self.samples < self.k:
            raise ValueError(f"samples ({self.samples}) must be >= k ({self.k})")
        return self

    @property
    def n(self) -> int:
        return self.samples or self.k


class HypervolumeReport(_Strict):
    """Objective specs: each run's point is its values of ``metrics`` (e.g. per-objective window summaries such as
    ``rewards/positivity/mean_tail_mean``); the report gives, per arm, the hypervolume (exact; Zitzler & Thiele
    1999) of the arm's mean point and the mean ± sd of the per-seed hypervolumes."""

    metrics: List[str] = Field(..., min_length=2, description="One reported metric per objective (known metrics: "
                               "eval metrics, pass@k, <window key>_tail_mean / _auc).")
    reference: List[float] = Field(..., description="The reference point, one value per metric (a point counts "
                                   "only where it beats it in every objective).")
    maximize: Optional[List[bool]] = Field(None, description="Per metric, true when larger is better (default: "
                                           "all true; minimised ones are sign-flipped).")

    @model_validator(mode="after")
    def _lengths(self):
        d = len(self.metrics)
        if len(self.reference) != d or (self.maximize is not None and len(self.maximize) != d):
            raise ValueError(f"hypervolume: reference (and maximize) need one value per metric ({d}), got "
                             f"{len(self.reference)}" + (f" / {len(self.maximize)}" if self.maximize else ""))
        return self


class Arm(_Strict):
    name: str = Field(..., pattern=NAME, description="Arm name (names the run dirs <arm>-s<seed>).")
    recipe: str = Field(..., min_length=1, description="A shipped recipe name (recipes/<name>.yaml) or a path "
                        "relative to the spec file.")
    overrides: List[str] = Field(default_factory=list, description="Dotted recipe overrides of this arm.")
    description: str = Field("", description="Shown in the report.")


def is_domain_metric(metric: str) -> bool:
    """``<eval metric>/<domain>``: an eval metric of one held-out domain (``summary.json`` ``eval.after.by_domain``;
    a ``data.eval: {mixture: [...]}``)."""
    base, sep, domain = metric.partition("/")
    return bool(sep) and base in EVAL_METRICS and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", domain) is not None


class Spec(_Strict):
    name: str = Field(..., pattern=NAME, description="Comparison name (report file stem, default runs dir).")
    description: str = Field("", description="One paragraph shown at the top of the report.")
    baseline: str = Field(..., description="The arm every other arm is compared with (paired differences).")
    seeds: List[int] = Field(..., min_length=1, description="Seeds; the same seed pairs the arms (shared init and "
                             "data order).")
    arms: List[Arm] = Field(..., min_length=2)
    common_overrides: List[str] = Field(default_factory=list, description="Overrides for every run (before the "
                                        "arm's own).")
    runs_dir: Optional[str] = Field(None, description="Where the runs go (default runs/compare/<name>); relative "
                                    "to the current directory.")
    out_dir: Optional[str] = Field(None, description="Where the report goes (default: runs_dir).")
    report_name: Optional[str] = Field(None, pattern=NAME, description="Report file stem (default: name).")
    primary_metric: str = Field("accuracy", description="The metric of the headline sentences and the plot; "
                                "<metric>/<domain> (e.g. accuracy/add) for one domain of a data.eval mixture.")
    metrics: Optional[List[str]] = Field(None, description="Eval metrics to report (default: accuracy, "
                                         "mean_score, truncated_fraction); their per-domain forms <metric>/<domain> "
                                         "are added for every domain the runs' evaluations report.")
    window_metrics: List[str] = Field(default_factory=lambda: ["entropy"], description="metrics.jsonl keys "
                                      "summarised over a window (<key>_tail_mean, <key>_auc).")
    window_fraction: float = Field(0.2, gt=0.0, le=1.0, description="Tail window: the last fraction of the "
                                   "run's steps.")
    pass_at_k: Optional[PassAtK] = None
    hypervolume: Optional[HypervolumeReport] = None
    jobs: int = Field(1, ge=1, description="Runs in parallel (--jobs overrides).")
    threads: Optional[int] = Field(None, ge=1, description="Threads per run (model.threads and OMP_NUM_THREADS); "
                                   "default cores // jobs.")
    allow_mismatch: List[Literal["rollout_schedule", "eval_set", "max_steps"]] = Field(
        default_factory=list, description="Arms may differ in these (refused otherwise).")
    bootstrap_resamples: int = Field(2000, ge=100, le=100000)
    keep_models: bool = Field(False, description="Keep <run>/model after pass@k was computed from it.")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct (got {v})")
        return v

    @model_validator(mode="after")
    def _cross(self):
        names = [a.name for a in self.arms]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ValueError(f"arms.{i}.name: duplicate arm name '{n}'")
        if self.baseline not in names:
            raise ValueError(f"baseline: '{self.baseline}' is not an arm of this spec (arms: {', '.join(names)})")
        for where, items in [("common_overrides", self.common_overrides)] + [
                (f"arms.{i}.overrides", a.overrides) for i, a in enumerate(self.arms)]:
            for j, item in enumerate(items):
                key = item.partition("=")[0].strip()
                if key in RESERVED:
                    raise ValueError(f"{where}.{j}: '{key}' is set by the harness for every run "
                                     f"(spec key: {RESERVED[key]})")
        known = self.known_metrics()
        for key, vals in (("primary_metric", [self.primary_metric]), ("metrics", self.metrics or []),
                          ("hypervolume.metrics", self.hypervolume.metrics if self.hypervolume else [])):
            for m in vals:
                if m not in known and not is_domain_metric(m):
                    raise ValueError(f"{key}: unknown metric '{m}' (known: {', '.join(known)})")
        return self

    def known_metrics(self) -> List[str]:
        out = list(EVAL_METRICS)
        if self.pass_at_k is not None:
            out.append(f"pass@{self.pass_at_k.k}")
        for w in self.window_metrics:
            out += [f"{w}_tail_mean", f"{w}_auc"]
        return out

    def reported_metrics(self) -> List[str]:
        """Eval metrics (spec order), then pass@k, then the window summaries; the primary metric first."""
        out = list(self.metrics or EVAL_METRICS)
        out += [m for m in self.known_metrics() if m not in EVAL_METRICS]
        return [self.primary_metric] + [m for m in out if m != self.primary_metric]


# ---------------------------------------------------------------------------------------------------- loading
def resolve_spec_path(arg: str | Path) -> Path:
    """A spec file path, or the name of a shipped spec (``recipes/compare/<name>.yaml``)."""
    p = Path(arg)
    if p.exists() or str(arg).endswith((".yaml", ".yml")) or os.sep in str(arg):
        return p
    shipped = COMPARE_DIR / f"{arg}.yaml"
    return shipped if shipped.exists() else p


def load_spec(path: str | Path) -> Spec:
    path = resolve_spec_path(path)
    if not path.is_file():
        raise CompareError(f"spec file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CompareError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path}: a spec must be a mapping (name, baseline, seeds, arms, ...)")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise CompareError(_format_validation_error(exc, str(path))) from None


def resolve_recipe(arm: Arm, spec_path: Path, index: int) -> Path:
    value = arm.recipe
    if value.endswith((".yaml", ".yml")) or "/" in value:
        p = Path(value).expanduser()
        p = p if p.is_absolute() else (spec_path.parent / p)
        if p.is_file():
            return p.resolve()
        raise CompareError(f"{spec_path}: arms.{index}.recipe: recipe file '{p}' does not exist (paths are relative "
                           "to the spec file)")
    shipped = RECIPES_DIR / f"{value}.yaml"
    if shipped.is_file():
        return shipped
    raise CompareError(f"{spec_path}: arms.{index}.recipe: no shipped recipe '{value}' (recipes/{value}.yaml); give "
                       "a shipped name or a .yaml path relative to the spec file")


# ----------------------------------------------------------------------------------------------------- plan
def strip_ignored(d: Dict[str, Any]) -> Dict[str, Any]:
    d = json.loads(json.dumps(d, default=str))  # deep copy, JSON-normalised (tuples -> lists)
    for key in IGNORED_FOR_REUSE:
        node, _, rest = key.partition(".")
        if rest:
            (d.get(node) or {}).pop(rest, None)
        else:
            d.pop(node, None)
    return d


def recipe_key(resolved: Dict[str, Any]) -> str:
    """The reuse key of a run: sha256 of its resolved recipe without ``output.*``, ``model.threads``,
    ``description`` and the checkpoint cadence (``train.save_steps`` / ``save_strategy`` / ``save_total_limit``)."""
    blob = json.dumps(strip_ignored(resolved), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class PlannedRun:
    arm: str
    seed: int
    recipe_path: Path
    overrides: List[str]          # every override the child gets (harness keys included)
    out: Path
    resolved: Dict[str, Any]
    key: str
    status: str = "pending"
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.arm}-s{self.seed}"


@dataclass
class Plan:
    spec: Spec
    spec_path: Path
    runs_dir: Path
    out_dir: Path
    report_name: str
    threads: int
    jobs: int
    runs: List[PlannedRun]
    recipes: Dict[str, Dict[str, Any]]   # arm -> resolved recipe (first seed)
    recipe_paths: Dict[str, Path]


def _schedule(r: Dict[str, Any]) -> Dict[str, Any]:
    t = r.get("train") or {}
    return {"train.num_iterations": t.get("num_iterations", 1),
            "train.steps_per_generation": t.get("steps_per_generation") or t.get("gradient_accumulation_steps", 1)}


def _eval_set(r: Dict[str, Any]) -> Dict[str, Any]:
    ev = r.get("eval") or {}
    return {"data.eval": (r.get("data") or {}).get("eval"),
            "eval.reward": ev.get("reward") or ((r.get("rewards") or [None])[0]),
            "eval.max_new_tokens": ev.get("max_new_tokens"), "eval.success_threshold": ev.get("success_threshold")}


def _first_difference(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[str]:
    for k in a:
        if json.dumps(a[k], sort_keys=True, default=str) != json.dumps(b.get(k), sort_keys=True, default=str):
            return k
    return None


def check_consistency(spec: Spec, recipes: Dict[str, Dict[str, Any]], source: str) -> None:
    """Every arm shares the baseline's rollout schedule, held-out set / scorer and max_steps unless the spec allows
    a difference (``allow_mismatch``); one line naming the arm, the key and both values otherwise."""
    base = recipes[spec.baseline]
    checks = (("rollout_schedule", _schedule), ("eval_set", _eval_set),
              ("max_steps", lambda r: {"train.max_steps": (r.get("train") or {}).get("max_steps")}))
    for i, arm in enumerate(spec.arms):
        r = recipes[arm.name]
        if not (r.get("data") or {}).get("eval") or not (r.get("eval") or {}).get("enabled", True):
            raise CompareError(f"{source}: arms.{i} ({arm.name}): the recipe has no held-out evaluation (data.eval "
                               "with eval.enabled): nothing to compare")
        if arm.name == spec.baseline:
            continue
        for kind, fn in checks:
            if kind in spec.allow_mismatch:
                continue
            a, b = fn(r), fn(base)
            key = _first_difference(a, b)
            if key is not None:
                raise CompareError(
                    f"{source}: arms.{i} ({arm.name}): {key} = {json.dumps(a[key], default=str)} differs from the "
                    f"baseline '{spec.baseline}' ({json.dumps(b[key], default=str)}); every arm must share the "
                    f"{kind.replace('_', ' ')} (allow_mismatch: [{kind}] to compare anyway)")


def default_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def make_plan(spec_path: str | Path, *, jobs: Optional[int] = None, runs_dir: Optional[str | Path] = None,
              out_dir: Optional[str | Path] = None, spec: Optional[Spec] = None) -> Plan:
    """Validate the spec, resolve every arm's recipe (one line per problem), check the arms agree, list the runs."""
    spec_path = resolve_spec_path(spec_path)
    spec = spec or load_spec(spec_path)
    source = str(spec_path)
    jobs = jobs or spec.jobs
    if jobs < 1:
        raise CompareError(f"--jobs must be >= 1 (got {jobs})")
    threads = spec.threads or default_threads(jobs)
    rd = Path(runs_dir or spec.runs_dir or Path("runs") / "compare" / spec.name).expanduser().absolute()
    od = Path(out_dir or spec.out_dir or rd).expanduser().absolute()
    save_model = "true" if spec.pass_at_k is not None else "false"
    recipes, paths, runs = {}, {}, []
    for i, arm in enumerate(spec.arms):
        path = resolve_recipe(arm, spec_path, i)
        paths[arm.name] = path
        for s_idx, seed in enumerate(spec.seeds):
            out = rd / f"{arm.name}-s{seed}"
            overrides = [f"output.save_model={save_model}", *spec.common_overrides, *arm.overrides, f"seed={seed}",
                         f"model.threads={threads}", f"output.dir={out}", "output.overwrite=true"]
            if s_idx == 0:
                try:
                    recipe = load_recipe(path, overrides)
                except RecipeError as exc:
                    raise CompareError(f"{source}: arms.{i} ({arm.name}): {exc}") from None
                resolved = recipe.model_dump(mode="json")
                recipes[arm.name] = resolved
            resolved = json.loads(json.dumps(recipes[arm.name]))
            resolved["seed"] = seed
            resolved["output"]["dir"] = str(out)
            runs.append(PlannedRun(arm.name, seed, path, overrides, out, resolved, recipe_key(resolved)))
    check_consistency(spec, recipes, source)
    return Plan(spec, spec_path, rd, od, spec.report_name or spec.name, threads, jobs, runs, recipes, paths)
