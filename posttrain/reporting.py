"""Run outputs: ``metrics.jsonl`` reading, the training-curves PNG, ``summary.json``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

# Panels: (title, candidate metric keys: an exact key, or a prefix ending in "/"). Panels with no data are left out.
PANELS = [
    ("reward", ["reward", "rewards/"]),
    ("held-out eval (greedy, before / after)", []),  # drawn from the run's summary (eval.before / eval.after)
    ("DPO implicit rewards", ["rewards/chosen", "rewards/rejected", "rewards/margins"]),
    ("DPO preference accuracy", ["rewards/accuracies"]),
    ("entropy", ["entropy"]),
    ("KL", ["kl"]),
    ("loss", ["loss"]),
    ("reward weights", ["reward_weights/"]),
    ("held-out objective evaluation", ["objective_eval/"]),
    ("objective weighting state", ["objective_weighting/"]),
    ("sequence weights", ["sequence_weighting/"]),
    ("token weights", ["weights/mean", "weights/min", "weights/max", "weights/frac_zero"]),
    ("entropy percentiles", ["entropy/p10", "entropy/p50", "entropy/p90"]),
    ("weight vs entropy (Pearson r per step)", ["weights/entropy_corr"]),
    ("DPO pair weighting", ["pairs/beta", "pairs/kept_fraction", "pairs/weight_mean", "pairs/weight_min",
                            "pairs/weight_max"]),
]
EVAL_PANEL = PANELS[1][0]
# DPOTrainer logs its implicit rewards under "rewards/"; they have their own panels, not GRPO's reward panel.
_DPO_REWARD_KEYS = frozenset({"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"})

# Curves with at least this many points are drawn twice: raw (faint) and smoothed (bold).
SMOOTH_MIN_POINTS = 8


def read_metrics(path: str | Path) -> List[Dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: List[Dict], prefix: str) -> Dict[str, tuple]:
    keys = sorted({k for r in rows for k in r if (k == prefix or (prefix.endswith("/") and k.startswith(prefix)))
                   and not k.endswith("/std") and not (prefix == "rewards/" and k in _DPO_REWARD_KEYS)})
    out = {}
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
               and math.isfinite(r[k])]
        if pts:
            out[k] = tuple(zip(*pts))
    return out


def smoothing_weight(n: int) -> float:
    """EMA weight for a curve of ``n`` points: 0 (no smoothing) below :data:`SMOOTH_MIN_POINTS`, then
    ``1 - 4 / n`` capped at 0.9 (an effective window of about a quarter of the curve, at most ~10 steps)."""
    if n < SMOOTH_MIN_POINTS:
        return 0.0
    return min(0.9, 1.0 - 4.0 / n)


def smooth(values, weight: float) -> List[float]:
    """Debiased exponential moving average, as TensorBoard's scalar smoothing: ``m_t = w m_{t-1} + (1 - w) y_t``
    from ``m_0 = 0``, divided by ``1 - w^t`` so the first points are not pulled towards 0. ``weight`` 0 returns the
    values unchanged."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, m = [], 0.0
    for t, y in enumerate(values, start=1):
        m = weight * m + (1.0 - weight) * float(y)
        out.append(m / (1.0 - weight ** t) if weight else float(y))
    return out


def _eval_points(eval_summary) -> Dict[str, Dict[str, float]]:
    """``{"accuracy": {"before": a, "after": b}, "mean score": {...}}`` from a summary's ``eval`` section."""
    out: Dict[str, Dict[str, float]] = {}
    for when in ("before", "after"):
        ev = (eval_summary or {}).get(when) or {}
        for key, label in (("accuracy", "accuracy"), ("mean_score", "mean score")):
            v = ev.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out.setdefault(label, {})[when] = float(v)
    if "mean score" in out and out.get("mean score") == out.get("accuracy"):
        out.pop("mean score")  # a 0/1 scorer: the same numbers twice
    return out


def curve_panels(rows: List[Dict], evals: Dict | None = None) -> List[tuple]:
    """``[(panel title, {key: (steps, values)} or None for the eval panel), ...]`` for the panels that have data."""
    panels = []
    for name, prefixes in PANELS:
        if name == EVAL_PANEL:
            if evals:
                panels.append((name, None))
            continue
        series = {}
        for p in prefixes:
            series.update(_series(rows, p))
        if series:
            panels.append((name, series))
    return panels


def plot_curves(metrics_path: str | Path, png_path: str | Path, title: str = "", eval_summary=None) -> Path | None:
    """The training-curves PNG: one panel per group of logged metrics that has data (empty groups are left out).

    Curves of :data:`SMOOTH_MIN_POINTS` or more points are drawn raw (faint) and smoothed (bold, :func:`smooth`).
    ``eval_summary`` (a run summary's ``eval`` section: ``{"before": {...}, "after": {...}}``) adds a panel with the
    held-out greedy evaluation before training (at step 0) and after it (at the last step). Returns None (and writes
    nothing) when there is nothing to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_path = Path(metrics_path)
    rows = [r for r in read_metrics(metrics_path) if "train_runtime" not in r and "step" in r]
    last_step = max((r["step"] for r in rows), default=1) or 1
    evals = _eval_points(eval_summary)
    panels = curve_panels(rows, evals)
    if not panels:
        return None
    cols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / cols)
    plt.rcParams["axes.formatter.useoffset"] = False  # no "1e-5+1.079e1" offsets on flat curves
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    smoothed_any = False
    for ax, (name, series) in zip(axes.flat, panels):
        ax.set_title(name, fontsize=10)
        if series is None:
            for i, (label, pts) in enumerate(evals.items()):
                xs = [0 if w == "before" else last_step for w in ("before", "after") if w in pts]
                ys = [pts[w] for w in ("before", "after") if w in pts]
                ax.plot(xs, ys, color=f"C{i}", ls="--", marker="o", ms=6, lw=1.2, label=label)
                for x, y in zip(xs, ys):
                    ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                                fontsize=8, color=f"C{i}")
            ax.set_xlim(-0.08 * last_step, 1.08 * last_step)
            ax.set_xticks([0, last_step], ["before\n(step 0)", f"after\n(step {last_step})"])
            ax.legend(fontsize=7)
            ax.margins(y=0.25)
            continue
        ax.set_xlabel("step")
        for i, (label, (x, y)) in enumerate(series.items()):
            color = f"C{i % 10}"
            w = smoothing_weight(len(y))
            if w:
                smoothed_any = True
                ax.plot(x, y, color=color, lw=0.8, alpha=0.25)
                ax.plot(x, smooth(y, w), color=color, lw=1.6, label=label)
            else:
                ax.plot(x, y, color=color, lw=1.2, marker="o" if len(y) < 4 else None, ms=3, label=label)
        if len(series) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    note = "bold: moving average (debiased EMA), faint: per step" if smoothed_any else ""
    fig.suptitle("\n".join(t for t in (title, note) if t), fontsize=11)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


def plot_domain_weights(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """The trajectory of a data mixture: ``domain/<name>/weight`` (lines) and ``domain/<name>/share`` of the batch
    (dots, same colour) per step; None (no file) when the run logged no domain weights."""
    rows = read_metrics(metrics_path)
    weights = _series(rows, "domain/")
    names = sorted({k.split("/")[1] for k in weights if k.endswith("/weight")})
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, name in enumerate(names):
        steps, values = weights[f"domain/{name}/weight"]
        ax.plot(steps, values, color=f"C{i}", lw=1.6, label=f"{name} weight")
        if f"domain/{name}/share" in weights:
            s_steps, shares = weights[f"domain/{name}/share"]
            ax.plot(s_steps, shares, "o", color=f"C{i}", ms=2.5, alpha=0.5, label=f"{name} share of batch")
    ax.set_xlabel("step")
    ax.set_ylabel("sampling weight / batch share")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "domain weights", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


def plot_margins(margins, weight_fn, png_path: str | Path, title: str = "") -> Path:
    """Histogram of the per-pair margins (the ``margin`` column MADPO weights by), with the weight each margin gets
    (``weight_fn``: margins tensor -> weights tensor, e.g. the run's pair weighting) drawn over the same axis range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    m = torch.as_tensor(list(margins), dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(m.numpy(), bins=min(40, max(5, m.numel() // 5)), color="C0", alpha=0.7)
    ax.set_xlabel("margin h = r(chosen) - r(rejected)")
    ax.set_ylabel("pairs")
    ax.axvline(0.0, color="gray", lw=0.8)
    lo, hi = float(m.min()), float(m.max())
    pad = 0.05 * (hi - lo) or 1.0
    grid = torch.linspace(lo - pad, hi + pad, 200, dtype=torch.float64)
    w = weight_fn(grid)
    ax2 = ax.twinx()
    ax2.plot(grid.numpy(), w.double().numpy(), color="C3", lw=1.5)
    ax2.set_ylabel("pair weight", color="C3")
    ax2.set_ylim(bottom=0)
    wm = weight_fn(m).double()
    ax.set_title(title or f"{m.numel()} pairs; {float((m > 0).double().mean()):.0%} with h > 0; "
                          f"weights {float(wm.min()):.2f}-{float(wm.max()):.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


def _write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    tmp.replace(path)
    return path


def write_json(path: str | Path, obj) -> None:
    _write_atomic(path, json.dumps(obj, indent=2, default=str))


# A hand-written interpretation inside a generated report survives regeneration when it sits between these markers.
NOTES_BEGIN = "<!-- notes: written by hand, kept when the script rewrites this file -->"
NOTES_END = "<!-- end notes -->"


class ReportNotesError(ValueError):
    """An existing report's hand-written notes block is malformed; the file is left untouched."""


def report_notes(path: str | Path) -> str:
    """The hand-written notes block (markers included) of an existing report; "" if the file or block is absent.

    Raises ``ReportNotesError`` for unbalanced markers. Compare scripts call it before training, so a broken block
    is reported in one line at the start instead of after hours of runs.
    """
    path = Path(path)
    if not path.exists():
        return ""
    old = path.read_text()
    begins, ends = old.count(NOTES_BEGIN), old.count(NOTES_END)
    if (begins, ends) not in ((0, 0), (1, 1)) or (begins and old.index(NOTES_END) < old.index(NOTES_BEGIN)):
        raise ReportNotesError(f"{path}: expected one '{NOTES_BEGIN}' line followed by one '{NOTES_END}' line, "
                               f"found {begins} and {ends}; fix the notes block by hand (the report is not rewritten "
                               "until then)")
    return old[old.index(NOTES_BEGIN):old.index(NOTES_END) + len(NOTES_END)] if begins else ""


def report_notes_problem(path: str | Path) -> str | None:
    """The one-line complaint about ``path``'s notes block, or None when it is fine or absent.

    For scripts to check the block before hours of runs: ``if (msg := report_notes_problem(md)): parser.error(msg)``.
    """
    try:
        report_notes(path)
    except ReportNotesError as exc:
        return str(exc)
    return None


def write_report(path: str | Path, text: str) -> Path:
    """Write a generated Markdown report, keeping the hand-written notes block of the file it replaces.

    The block (``NOTES_BEGIN`` ... ``NOTES_END``, markers included) of the existing file is inserted after the first
    line of ``text`` (the title), so ``--report-only`` re-runs of the compare scripts never lose the interpretation.
    A file with unbalanced markers is not overwritten (``ReportNotesError``): losing the notes silently is worse.
    """
    path = Path(path)
    notes = report_notes(path)
    if notes:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{notes}\n\n{rest.lstrip(chr(10))}"
    return _write_atomic(path, text)
