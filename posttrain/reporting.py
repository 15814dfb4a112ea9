"""Run outputs: ``metrics.jsonl`` reading, the training-curves PNG, ``summary.json``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

# Panels: (title, candidate metric keys; the first present ones are drawn)
PANELS = [
    ("reward", ["reward", "rewards/"]),
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


def read_metrics(path: str | Path) -> List[Dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: List[Dict], prefix: str) -> Dict[str, tuple]:
    keys = sorted({k for r in rows for k in r if (k == prefix or (prefix.endswith("/") and k.startswith(prefix)))
                   and not k.endswith("/std")})
    out = {}
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if pts:
            out[k] = tuple(zip(*pts))
    return out


def plot_curves(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "train_runtime" not in r]
    panels = []
    for name, prefixes in PANELS:
        series = {}
        for p in prefixes:
            series.update(_series(rows, p))
        if series or name in ("reward", "entropy", "KL", "loss"):
            panels.append((name, series))
    cols = 2
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(10, 3.2 * nrows), squeeze=False)
    for ax, (name, series) in zip(axes.flat, panels):
        for label, (x, y) in series.items():
            ax.plot(x, y, label=label, lw=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        if not series:
            why = "not logged (beta = 0: no reference model)" if name == "KL" else "not logged"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="gray")
        elif len(series) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
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
