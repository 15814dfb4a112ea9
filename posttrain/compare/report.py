"""Collect the finished runs of a plan, compute the statistics, write ``<name>.md`` / ``.json`` / ``.png``.

The Markdown goes through :func:`posttrain.reporting.write_report`, so a hand-written notes block survives a rewrite.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from posttrain.compare import stats
from posttrain.compare.items import item_metric_values, items_by_domain, read_item_scores, read_pass_at_k
from posttrain.compare.spec import EVAL_METRICS, Plan, PlannedRun, is_domain_metric

OK = ("ok", "reused")


# --------------------------------------------------------------------------------------------------- collect
def _curve(rows: List[Dict], key: str) -> List[tuple]:
    return [(r["step"], r[key]) for r in rows if "train_runtime" not in r and isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool) and math.isfinite(r[key])]


def _seconds_per_step(s: Dict) -> Optional[float]:
    """train_seconds / steps; a resumed run's train_seconds cover its last process only, whose step count is
    recovered from transformers' train_runtime × train_steps_per_second (as scripts/compare_dpo.py does)."""
    steps, secs = s.get("global_step"), s.get("train_seconds")
    if not steps or not secs:
        return None
    tm = s.get("train_metrics") or {}
    if tm.get("train_runtime") and tm.get("train_steps_per_second"):
        product = tm["train_runtime"] * tm["train_steps_per_second"]
        if abs(product - steps) > 0.5 + 0.0005 * tm["train_runtime"]:
            steps = max(1, round(product))
    return secs / steps


def collect_run(plan: Plan, run: PlannedRun) -> Dict[str, Any]:
    spec = plan.spec
    r: Dict[str, Any] = {"id": run.id, "arm": run.arm, "seed": run.seed, "status": run.status, "dir": str(run.out),
                         "key": run.key, "error": run.info.get("error"), "metrics": {}, "before": {}, "items": {},
                         "item_ids": None, "curves": {}, "peak_rss_mb": run.info.get("peak_rss_mb"),
                         "resumed": bool(run.info.get("resumed"))}
    if run.status not in OK:
        return r
    s = json.loads((run.out / "summary.json").read_text())
    after, before = s["eval"].get("after") or {}, s["eval"].get("before") or {}
    for target, ev in ((r["metrics"], after), (r["before"], before)):
        _eval_metrics(target, ev)
    r["n_items"] = after.get("n")
    thr = (run.resolved.get("eval") or {}).get("success_threshold", 1.0)
    items = read_item_scores(run.out, thr)
    if items is not None:
        r["item_source"] = items["source"]
        r["item_ids"] = items["ids"]
        parts = [("", items)] + [(f"/{d}", sub) for d, sub in items_by_domain(items).items()]
        for suffix, part in parts:
            for m in EVAL_METRICS:
                v = item_metric_values(part, m)
                if v is not None:
                    r["items"][m + suffix] = v
    initial = read_item_scores(run.out, thr, which="before")
    r["before_items"] = {} if initial is None else {
        m: v for m in EVAL_METRICS if (v := item_metric_values(initial, m)) is not None}
    pk = spec.pass_at_k
    if pk is not None:
        got = read_pass_at_k(run.out, pk.k, pk.n, pk.temperature)
        if got is not None:
            r["metrics"][f"pass@{pk.k}"] = got["value"]
            r["items"][f"pass@{pk.k}"] = got["items"]
    from posttrain.reporting import read_metrics

    rows = read_metrics(run.out / "metrics.jsonl")
    for w in spec.window_metrics:
        pts = _curve(rows, w)
        if pts:
            r["curves"][w] = pts
            ws = stats.window_summary(pts, spec.window_fraction, last_step=s.get("global_step"))
            r["metrics"][f"{w}_tail_mean"] = ws["tail_mean"]
            r["metrics"][f"{w}_auc"] = ws["auc"]
    r["s_per_step"] = _seconds_per_step(s)
    r["train_seconds"] = s.get("train_seconds")
    r["steps"] = s.get("global_step")
    return r


def _eval_metrics(target: Dict[str, float], ev: Dict[str, Any]) -> None:
    """The overall eval metrics of one evaluation, and ``<metric>/<domain>`` of each of its ``by_domain`` entries."""
    for suffix, part in [("", ev)] + [(f"/{d}", m) for d, m in (ev.get("by_domain") or {}).items()]:
        for m in EVAL_METRICS:
            v = part.get(m)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                target[m + suffix] = float(v)


def _with_domain_metrics(metrics: List[str], collected: List[Dict]) -> List[str]:
    """``metrics`` plus the per-domain form ``<metric>/<domain>`` of each of its eval metrics for every domain the
    runs report (domains in order of first appearance), each right after the overall metrics."""
    found = list(dict.fromkeys(m for r in collected for m in r["metrics"] if is_domain_metric(m)))
    extra = [m for m in found if m.split("/", 1)[0] in metrics and m not in metrics]
    extra.sort(key=lambda m: EVAL_METRICS.index(m.split("/", 1)[0]))   # stable: domains keep their order
    last = max((i for i, m in enumerate(metrics) if m in EVAL_METRICS or is_domain_metric(m)), default=len(metrics) - 1)
    return metrics[:last + 1] + extra + metrics[last + 1:]


# --------------------------------------------------------------------------------------------------- analyse
def _item_matrix(runs: List[Dict], metric: str) -> Optional[np.ndarray]:
    """[seeds, items] per-item values of ``metric`` when every run has them for the same items, else None."""
    vals = [r["items"].get(metric) for r in runs]
    if not runs or any(v is None for v in vals) or len({len(v) for v in vals}) != 1:
        return None
    ids = [r["item_ids"] for r in runs if r.get("item_ids")]
    if ids and any(i != ids[0] for i in ids):
        return None
    return np.stack([np.asarray(v, dtype=float) for v in vals])


def analyse(plan: Plan, collected: List[Dict]) -> Dict[str, Any]:
    spec = plan.spec
    metrics = _with_domain_metrics(spec.reported_metrics(), collected)
    by_arm = {a.name: [r for r in collected if r["arm"] == a.name] for a in spec.arms}
    B = spec.bootstrap_resamples
    arms: Dict[str, Any] = {}
    notes: List[str] = []
    for arm in spec.arms:
        runs = by_arm[arm.name]
        ok = [r for r in runs if r["status"] in OK]
        entry = {"recipe": str(plan.recipe_paths[arm.name]), "overrides": arm.overrides,
                 "description": arm.description, "runs_ok": len(ok), "runs": len(runs),
                 "failed": {r["id"]: r["error"] for r in runs if r["status"] not in OK}, "metrics": {}, "before": {}}
        for m in metrics:
            have = [r for r in ok if r["metrics"].get(m) is not None]
            if not have:
                continue
            X = _item_matrix(have, m)
            if X is not None:
                res = stats.bootstrap_mean(X, resamples=B, seed=0)
                res["method"] = "bootstrap over seeds and items"
            else:
                res = stats.mean_ci_t([r["metrics"][m] for r in have])
                res["method"] = "t over seeds"
                res["n_seeds"] = res.pop("n")
            res["per_seed"] = {r["seed"]: r["metrics"][m] for r in have}
            entry["metrics"][m] = res
        for m in dict.fromkeys(k for r in ok for k in r["before"]):
            entry["before"][m] = float(np.mean([r["before"][m] for r in ok if m in r["before"]]))
        sps = [r["s_per_step"] for r in ok if r.get("s_per_step")]
        mem = [r["peak_rss_mb"] for r in ok if r.get("peak_rss_mb")]
        entry["cost"] = {"s_per_step": float(np.mean(sps)) if sps else None,
                         "peak_rss_mb": float(np.max(mem)) if mem else None,
                         "train_seconds": float(np.mean([r["train_seconds"] for r in ok if r.get("train_seconds")]))
                         if any(r.get("train_seconds") for r in ok) else None}
        arms[arm.name] = entry

    base_runs = {r["seed"]: r for r in by_arm[spec.baseline] if r["status"] in OK}
    diffs: Dict[str, Dict[str, Any]] = {}
    for arm in spec.arms:
        if arm.name == spec.baseline:
            continue
        diffs[arm.name] = {}
        mine = {r["seed"]: r for r in by_arm[arm.name] if r["status"] in OK}
        for m in metrics:
            seeds = [s for s in spec.seeds if s in mine and s in base_runs
                     and mine[s]["metrics"].get(m) is not None and base_runs[s]["metrics"].get(m) is not None]
            if not seeds:
                continue
            a, b = [mine[s] for s in seeds], [base_runs[s] for s in seeds]
            t = stats.paired_t([r["metrics"][m] for r in a], [r["metrics"][m] for r in b])
            XA, XB = _item_matrix(a, m), _item_matrix(b, m)
            boot = None
            if XA is not None and XB is not None and XA.shape == XB.shape and (
                    not a[0].get("item_ids") or a[0]["item_ids"] == b[0].get("item_ids")):
                boot = stats.paired_bootstrap(XA, XB, resamples=B, seed=0)
            elif any(r["items"].get(m) is not None for r in a + b):
                notes.append(f"{arm.name} vs {spec.baseline}, {m}: per-item scores differ in items or are missing "
                             "in some runs; paired t over seeds used")
            primary = boot or t
            d = {"diff": primary["diff"], "lo": primary["lo"], "hi": primary["hi"], "se": primary["se"],
                 "method": primary["method"], "n_seeds": len(seeds), "n_items": primary.get("n_items"),
                 "seeds": seeds, "paired_t": t, "bootstrap": boot}
            d["mde"] = stats.mde(primary["se"]) if (boot is not None or len(seeds) >= 2) else None
            d["reading"] = stats.describe(d["diff"], d["lo"], d["hi"], d["mde"], fmt=_fmt_of(m),
                                          n_seeds=len(seeds),
                                          seed_interval=(t["lo"], t["hi"]) if boot is not None else None)
            diffs[arm.name][m] = d
    gains, initial_scores = _gains_over_initial(spec, by_arm, metrics, B)
    hv = None
    if spec.hypervolume is not None:
        h = spec.hypervolume
        hv = {"metrics": h.metrics, "reference": h.reference, "maximize": h.maximize, "arms": {}}
        for arm in spec.arms:
            pts = {r["seed"]: [r["metrics"][m] for m in h.metrics] for r in by_arm[arm.name]
                   if r["status"] in OK and all(r["metrics"].get(m) is not None for m in h.metrics)}
            hv["arms"][arm.name] = stats.hypervolume_summary(pts, h.reference, h.maximize)
    return {"name": spec.name, "description": spec.description, "spec_path": str(plan.spec_path),
            "hypervolume": hv,
            "baseline": spec.baseline, "seeds": spec.seeds, "primary_metric": spec.primary_metric,
            "metrics": metrics, "threads": plan.threads, "jobs": plan.jobs, "runs_dir": str(plan.runs_dir),
            "common_overrides": spec.common_overrides, "arms": arms, "differences": diffs, "notes": notes,
            "gains_over_initial": gains, "initial": initial_scores,
            "statistics": STATISTICS_TEXT.format(B=B, frac=spec.window_fraction),
            "runs": [{k: v for k, v in r.items() if k not in ("items", "curves", "item_ids", "before_items")}
                     for r in collected],
            "curves": {r["id"]: r["curves"] for r in collected if r["curves"]},
            "models": sorted({(plan.recipes[a.name].get("model") or {}).get("name", "?") for a in spec.arms}),
            "max_steps": sorted({str((plan.recipes[a.name].get("train") or {}).get("max_steps")) for a in spec.arms})}


def _gains_over_initial(spec, by_arm: Dict[str, List[Dict]], metrics: List[str], resamples: int):
    """Every arm's after-training score minus the initial model's, paired over the held-out items: the initial
    model (a LoRA run starts at it, so it is the same for every arm and seed) is the first finished run's
    ``eval.before`` per-item scores; per arm, the [seeds, items] after-scores minus that vector repeated per seed,
    two-level bootstrap (seeds, then items). ``({arm: {metric: diff...}}, {metric: initial value})``; empty when
    no run evaluated the initial model per item."""
    first = next((r for a in spec.arms for r in by_arm[a.name] if r["status"] in OK and r.get("before_items")), None)
    if first is None:
        return {}, {}
    init = first["before_items"]
    gains: Dict[str, Dict[str, Any]] = {}
    for arm in spec.arms:
        ok = [r for r in by_arm[arm.name] if r["status"] in OK]
        for m in [m for m in metrics if m in init]:
            X = _item_matrix(ok, m)
            if X is None or X.shape[1] != len(init[m]) or (
                    first.get("item_ids") and ok[0].get("item_ids") != first["item_ids"]):
                continue
            res = stats.paired_bootstrap(X, np.tile(np.asarray(init[m], dtype=float), (X.shape[0], 1)),
                                         resamples=resamples, seed=0)
            res["mde"] = stats.mde(res["se"])
            res["t_over_seeds"] = stats.mean_ci_t((np.nanmean(X, axis=1) - float(np.nanmean(init[m]))).tolist())
            t = res["t_over_seeds"]
            res["reading"] = stats.describe(res["diff"], res["lo"], res["hi"], res["mde"], fmt=_fmt_of(m),
                                            n_seeds=X.shape[0], seed_interval=(t["lo"], t["hi"])
                                            ).replace("the baseline", "the initial model")
            gains.setdefault(arm.name, {})[m] = res
    return gains, {m: float(np.nanmean(v)) for m, v in init.items()}


STATISTICS_TEXT = (
    "Per arm: mean over seeds with a 95 % interval. Paired differences (arm − baseline, same seeds): when every "
    "run stored per-item held-out scores, a two-level paired percentile bootstrap ({B} resamples: seeds with "
    "replacement, then held-out items with replacement within each drawn seed, the same draws for both arms) is "
    "the primary interval; otherwise (and for pass-through metrics without per-item values) a paired t over seeds, "
    "diff ± t(0.975, n−1)·sd(d)/√n. The per-arm interval uses the same rule (bootstrap of the arm's mean, else t). "
    "MDE = (z(0.975) + z(0.8))·se = 2.80·se: the difference a two-sided test at α = 0.05 detects with 80 % power "
    "at this run's seeds and items (normal approximation; se from the primary method: the bootstrap sd, or "
    "sd(d)/√n). A difference whose interval contains 0 is reported as \"no detectable difference (MDE x)\"; "
    "one whose bootstrap interval excludes 0 while the paired t over seeds contains it, as \"inconclusive\" (with "
    "few seeds the bootstrap over seeds is the narrower of the two). "
    "Logged curves (e.g. entropy) are summarised per run over a window, never one step: <key>_tail_mean = mean "
    "of the points logged in the last {frac:.0%} of the run's steps (n/a when none was: the policy entropy is "
    "logged only on steps whose micro-batches carried gradient), <key>_auc = trapezoidal area under the curve over "
    "the logged steps. Cost: s/step = train seconds / steps; peak memory = the run process's maximum resident set size.")


# ---------------------------------------------------------------------------------------------------- format
def _fmt_of(metric: str) -> str:
    return {"s/step": ".2f", "MB": ".0f"}.get(metric, ".4g" if metric.endswith("_auc") else ".3f")


def _f(x, metric: str = "", na: str = "n/a") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return na
    return format(x, _fmt_of(metric))


def _ci(res: Dict, metric: str) -> str:
    if res is None or res.get("mean", res.get("diff")) is None:
        return "n/a"
    v = res.get("mean", res.get("diff"))
    if res.get("lo") is None:
        return f"{_f(v, metric)} [n/a]"
    return f"{_f(v, metric)} [{_f(res['lo'], metric)}, {_f(res['hi'], metric)}]"


def _signed(x, metric):
    return "n/a" if x is None else ("+" if x >= 0 else "") + _f(x, metric)


def render_markdown(plan: Plan, a: Dict, png_name: Optional[str]) -> str:
    spec = plan.spec
    prim = spec.primary_metric
    L = [f"# Comparison: {spec.name}", ""]
    if spec.description:
        L += [spec.description.strip(), ""]
    if any(str(m).startswith("tiny") for m in a["models"]):
        L += ["> **Smoke test on a tiny random model: these numbers say nothing about the methods; they show that "
              "the pipeline runs.**", ""]
    n_runs = len(a["runs"])
    ok = sum(r["status"] in OK for r in a["runs"])
    L += [f"Produced by `posttrain compare {_rel(plan.spec_path)}`: {len(spec.arms)} arms × {len(spec.seeds)} seeds "
          f"({', '.join(map(str, spec.seeds))}) = {n_runs} runs, {ok} finished; the same seed pairs the arms "
          f"(shared initialisation and data order). Baseline: `{spec.baseline}`. Max steps: "
          f"{', '.join(a['max_steps'])}; {plan.threads} thread(s) per run, {plan.jobs} job(s) at a time. "
          f"Runs: `{_rel(plan.runs_dir)}`.", ""]
    bad = [r for r in a["runs"] if r["status"] not in OK]
    if bad:
        L += ["**Not in the statistics:** " + "; ".join(f"`{r['id']}` {r['status']}: {r.get('error') or ''}".strip()
                                                          for r in bad) + ".", ""]
    L += [f"## Headline: {prim}", ""]
    for arm, per in a["differences"].items():
        d = per.get(prim)
        if d is None:
            L.append(f"- `{arm}` − `{spec.baseline}`: n/a (no paired finished runs)")
            continue
        extra = "" if d["reading"].startswith(("higher", "lower", "inconclusive")) else (
            f"; difference {_signed(d['diff'], prim)}, 95 % CI [{_f(d['lo'], prim)}, {_f(d['hi'], prim)}]")
        L.append(f"- `{arm}` − `{spec.baseline}`: {d['reading']}{extra} ({d['method']}, {_n_desc(d)}).")
    L += ["", "## Arms (mean [95 % CI] over seeds)", ""]
    cols = [m for m in a["metrics"] if any(r["metrics"].get(m) is not None for r in a["runs"])]
    absent = [m for m in a["metrics"] if m not in cols]
    L += ["| arm | runs | " + f"{prim} before | " + " | ".join(cols) + " | s/step | peak MB |",
          "|---|---|---|" + "---|" * len(cols) + "---|---|"]
    for arm in spec.arms:
        e = a["arms"][arm.name]
        if e["runs_ok"] == 0:
            err = next(iter(e["failed"].values()), "") or ""
            L.append(f"| {arm.name} | 0/{e['runs']} | **failed**: {_cell(err)} |" + " |" * (len(cols) + 2))
            continue
        cells = [_ci(e["metrics"].get(m), m) for m in cols]
        c = e["cost"]
        L.append(f"| {arm.name} | {e['runs_ok']}/{e['runs']} | {_f(e['before'].get(prim), prim)} | "
                 + " | ".join(cells) + f" | {_f(c['s_per_step'], 's/step')} | {_f(c['peak_rss_mb'], 'MB')} |")
    if a.get("hypervolume"):
        L += _hypervolume_lines(a["hypervolume"])
    L += ["", f"## Paired differences vs `{spec.baseline}`", "",
          "| arm − baseline | metric | difference [95 % CI] | test | seeds × items | MDE (80 % power) | reading "
          "| paired t over seeds [95 % CI] |",
          "|---|---|---|---|---|---|---|---|"]
    for arm, per in a["differences"].items():
        for m in cols:
            d = per.get(m)
            if d is None:
                continue
            L.append(f"| {arm} − {spec.baseline} | {m} | {_signed(d['diff'], m)} [{_f(d['lo'], m)}, {_f(d['hi'], m)}]"
                     f" | {d['method']} | {_n_desc(d)} | {_f(d['mde'], m)} | {d['reading']} | "
                     f"{_t_cell(d['paired_t'], m, centre='diff')} |")
    if a.get("gains_over_initial"):
        L += ["", "## Gain over the initial model", "",
              "The initial model (LoRA starts at it: the same for every arm and seed) evaluated once, per item "
              f"(`eval.before`); gain = after − initial, paired over the held-out items.", "",
              "| arm | metric | initial | after | gain [95 % CI] | test | seeds × items | MDE (80 % power) | reading "
              "| t over seeds [95 % CI] |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for arm, per in a["gains_over_initial"].items():
            for m, g in per.items():
                after = a["arms"][arm]["metrics"].get(m, {}).get("mean")
                L.append(f"| {arm} | {m} | {_f(a['initial'].get(m), m)} | {_f(after, m)} | {_signed(g['diff'], m)} "
                         f"[{_f(g['lo'], m)}, {_f(g['hi'], m)}] | {g['method']} | {_n_desc(g)} | "
                         f"{_f(g['mde'], m)} | {g['reading']} | {_t_cell(g['t_over_seeds'], m)} |")
    L += ["", "## Every run", "", "| run | status | " + " | ".join(cols) + " | s/step | peak MB | note |",
          "|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for r in a["runs"]:
        note = r.get("error") or ("resumed" if r.get("resumed") else "")
        L.append(f"| {r['id']} | {r['status']} | " + " | ".join(_f(r["metrics"].get(m), m) for m in cols)
                 + f" | {_f(r.get('s_per_step'), 's/step')} | {_f(r.get('peak_rss_mb'), 'MB')} | {_cell(note)} |")
    L += ["", "## Set-up", ""]
    if spec.common_overrides:
        L.append(f"- every run: `{' '.join(spec.common_overrides)}`")
    for arm in spec.arms:
        L.append(f"- `{arm.name}`: `{_rel(plan.recipe_paths[arm.name])}`"
                 + (f" with `{' '.join(arm.overrides)}`" if arm.overrides else "")
                 + (f" — {arm.description}" if arm.description else ""))
    if spec.pass_at_k is not None:
        pk = spec.pass_at_k
        L.append(f"- pass@{pk.k}: {pk.n} samples per held-out item at temperature {pk.temperature} from the saved "
                 "model, scored by the recipe's eval scorer (correct: score ≥ eval.success_threshold); unbiased "
                 "estimator 1 − C(n−c, k)/C(n, k)")
    if absent:
        L.append(f"- not available in any run (not logged, or every run failed): {', '.join(absent)}")
    L += ["", "Statistics: " + a["statistics"], ""]
    for n in a["notes"]:
        L.append(f"- note: {n}")
    if png_name:
        L += ["", f"![comparison]({png_name})", ""]
    return "\n".join(L)


def _hypervolume_lines(hv: Dict) -> List[str]:
    mx = hv["maximize"] or [True] * len(hv["metrics"])
    objs = ", ".join(f"{m} ({'max' if x else 'min'})" for m, x in zip(hv["metrics"], mx))
    L = ["", "## Hypervolume", "", f"Objectives: {objs}; reference point ({', '.join(_f(v) for v in hv['reference'])})."
         " HV of the mean point = the hypervolume of the arm's mean over seeds; per-seed = mean ± sd over seeds of "
         "each run's own hypervolume.", "", "| arm | seeds | mean point | HV of mean point | per-seed HV mean ± sd |",
         "|---|---|---|---|---|"]
    for arm, r in hv["arms"].items():
        if not r["n_seeds"]:
            L.append(f"| {arm} | 0 | n/a (a metric is missing in every run) | n/a | n/a |")
            continue
        pt = "(" + ", ".join(_f(v) for v in r["mean_point"]) + ")"
        sd = "" if r["sd"] is None else f" ± {r['sd']:.4g}"
        L.append(f"| {arm} | {r['n_seeds']} | {pt} | {r['hv_of_mean_point']:.4g} | {r['mean']:.4g}{sd} |")
    return L


def _t_cell(t: Dict, metric: str, centre: str = "mean") -> str:
    """``centre [lo, hi]`` of a t interval over seeds (``n/a`` with one seed). ``centre`` names the point estimate's
    key: ``mean`` for ``stats.mean_ci_t``, ``diff`` for ``stats.paired_t``."""
    if t.get("lo") is None:
        return "n/a"
    return f"{_signed(t[centre], metric)} [{_f(t['lo'], metric)}, {_f(t['hi'], metric)}]"


def _n_desc(d: Dict) -> str:
    return f"{d['n_seeds']} seed{'s' if d['n_seeds'] != 1 else ''}" + (f" × {d['n_items']} items" if d.get("n_items")
                                                                       else "")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _rel(p) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def plot(plan: Plan, a: Dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = plan.spec
    prim = spec.primary_metric
    names = [x.name for x in spec.arms]
    curves = {w: {r_id: c[w] for r_id, c in a["curves"].items() if w in c} for w in spec.window_metrics}
    curves = {w: c for w, c in curves.items() if c}
    ncol = 2 + len(curves)
    fig, axes = plt.subplots(1, ncol, figsize=(4.4 * ncol, 3.8), squeeze=False)
    ax = axes[0][0]
    for i, n in enumerate(names):
        res = a["arms"][n]["metrics"].get(prim)
        if not res:
            statuses = {r["status"] for r in a["runs"] if r["arm"] == n}
            # x in data, y in axes coordinates: a label at y = 0 far below the data broke tight_layout
            ax.text(i, 0.02, "not run" if statuses <= {"missing"} else "failed", ha="center", color="C3",
                    fontsize=8, transform=ax.get_xaxis_transform())
            continue
        ys = list(res["per_seed"].values())
        ax.scatter([i] * len(ys), ys, color="k", s=12, zorder=3)
        if res.get("lo") is not None:
            ax.errorbar([i], [res["mean"]], yerr=[[res["mean"] - res["lo"]], [res["hi"] - res["mean"]]], fmt="o",
                        color=f"C{i}", capsize=4)
        else:
            ax.plot([i], [res["mean"]], "o", color=f"C{i}")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_title(f"{prim} per arm (dots: seeds; bar: 95 % CI)", fontsize=9)
    ax = axes[0][1]
    others = [n for n in names if n != spec.baseline]
    for i, n in enumerate(others):
        d = a["differences"].get(n, {}).get(prim)
        if not d:
            continue
        if d.get("lo") is not None:
            ax.errorbar([i], [d["diff"]], yerr=[[d["diff"] - d["lo"]], [d["hi"] - d["diff"]]], fmt="o",
                        color=f"C{names.index(n)}", capsize=4)
        else:
            ax.plot([i], [d["diff"]], "o", color=f"C{names.index(n)}")
        if d.get("mde"):
            ax.fill_between([i - 0.3, i + 0.3], -d["mde"], d["mde"], color="gray", alpha=0.2, lw=0)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(others)), others, rotation=20, fontsize=8)
    ax.set_xlim(-0.6, len(others) - 0.4)
    ax.set_title(f"{prim}: arm − {spec.baseline} (95 % CI; grey: ±MDE)", fontsize=9)
    for j, (w, per_run) in enumerate(curves.items()):
        ax = axes[0][2 + j]
        seen = set()
        for r_id, pts in sorted(per_run.items()):
            arm = r_id.rsplit("-s", 1)[0]
            x, y = zip(*pts)
            ax.plot(x, y, color=f"C{names.index(arm)}", lw=1, alpha=0.8, label=None if arm in seen else arm)
            seen.add(arm)
        ax.set_title(f"{w} per step (each run)", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_outputs(plan: Plan, a: Dict) -> Dict[str, str]:
    from posttrain.reporting import write_json, write_report

    plan.out_dir.mkdir(parents=True, exist_ok=True)
    md = plan.out_dir / f"{plan.report_name}.md"
    js = plan.out_dir / f"{plan.report_name}.json"
    png = plan.out_dir / f"{plan.report_name}.png"
    plot(plan, a, png)
    write_report(md, render_markdown(plan, a, png.name))
    write_json(js, a)
    return {"markdown": str(md), "json": str(js), "png": str(png)}
