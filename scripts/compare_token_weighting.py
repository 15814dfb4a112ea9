"""Evidence for issue 4: plain GRPO vs STEER vs 80/20 high-entropy tokens vs KL-Cov on SmolLM2 arithmetic.

Every method runs the same recipe (`recipes/quickstart.yaml` and its `extends:` children), the same seeds and the
same step budget, each run in its own `posttrain run` process. Collected per run: held-out greedy accuracy before
and after training (strict clean-answer scoring, n = 100) and the per-step policy entropy. Written:
`docs/results/token_weighting.md` (table: mean and spread over seeds, one row per method, plus every run) and
`docs/results/token_weighting.png` (entropy trajectories and accuracy).

    python scripts/compare_token_weighting.py                       # 4 methods x 2 seeds at the quickstart budget
    python scripts/compare_token_weighting.py --seeds 0 1 2 --methods plain steer
    python scripts/compare_token_weighting.py --report-only          # re-read finished runs, rewrite the report

Runs land in `runs/compare_token_weighting/<method>-s<seed>/`; finished runs (with summary.json) are reused.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posttrain.reporting import report_notes_problem, write_report  # noqa: E402

METHODS = {
    "plain": "recipes/quickstart.yaml",
    "steer": "recipes/grpo_steer.yaml",
    "high_entropy": "recipes/grpo_high_entropy.yaml",
    "kl_cov": "recipes/grpo_kl_cov.yaml",
    "clip_cov": "recipes/grpo_clip_cov.yaml",
    "tw_grpo": "recipes/grpo_tw.yaml",
}


def run(method: str, seed: int, out: Path, extra: list[str]) -> None:
    if (out / "summary.json").exists():
        return
    cmd = [sys.executable, "-m", "posttrain", "run", METHODS[method], f"seed={seed}", f"output.dir={out}",
           "output.overwrite=true", "output.save_model=false", *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def collect(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ent = [(r["step"], r["entropy"]) for r in rows if isinstance(r.get("entropy"), (int, float))]
    return {"before": s["eval"]["before"]["accuracy"], "after": s["eval"]["after"]["accuracy"],
            "n": s["eval"]["after"]["n"], "train_seconds": s["train_seconds"], "entropy": ent,
            "truncated_after": s["eval"]["after"]["truncated_fraction"]}


def _mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def report(results: dict, out_md: Path, out_png: Path, steps_note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# Token weighting on SmolLM2 arithmetic (issue 4 evidence)", "",
             f"Produced by `python scripts/compare_token_weighting.py {steps_note}`. Same recipe, seeds and budget for "
             "every method; held-out greedy accuracy with strict clean-answer scoring.", "",
             "| method | seeds | accuracy before | accuracy after (mean ± sd) | gain | final entropy | train s |",
             "|---|---|---|---|---|---|---|"]
    for m, runs in results.items():
        if not runs:
            continue
        b = _mean_sd([r["before"] for r in runs.values()])
        a = _mean_sd([r["after"] for r in runs.values()])
        ent = statistics.mean(r["entropy"][-1][1] for r in runs.values() if r["entropy"])
        t = statistics.mean(r["train_seconds"] for r in runs.values())
        lines.append(f"| {m} | {len(runs)} | {b[0]:.3f} | {a[0]:.3f} ± {a[1]:.3f} | {a[0] - b[0]:+.3f} | "
                     f"{ent:.3f} | {t:.0f} |")
    lines += ["", "Every run:", "", "| method | seed | before | after | truncated after |", "|---|---|---|---|---|"]
    for m, runs in results.items():
        for seed, r in sorted(runs.items()):
            lines.append(f"| {m} | {seed} | {r['before']:.2f} | {r['after']:.2f} | {r['truncated_after']:.2f} |")
    write_report(out_md, "\n".join(lines))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (m, runs) in enumerate(results.items()):
        for j, (seed, r) in enumerate(sorted(runs.items())):
            if r["entropy"]:
                x, y = zip(*r["entropy"])
                ax1.plot(x, y, color=f"C{i}", alpha=0.8, lw=1, label=m if j == 0 else None)
        afters = [r["after"] for r in runs.values()]
        ax2.bar(i, statistics.mean(afters), color=f"C{i}", alpha=0.7)
        ax2.scatter([i] * len(afters), afters, color="k", s=12, zorder=3)
    ax1.set(title="policy entropy", xlabel="step")
    ax1.legend(fontsize=8)
    ax2.set_xticks(range(len(results)), list(results), rotation=20)
    ax2.set(title="held-out accuracy after training", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["plain", "steer", "high_entropy", "kl_cov"], choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=None, help="override train.max_steps for every run")
    p.add_argument("--runs-dir", default="runs/compare_token_weighting")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra recipe overrides for every run, e.g. model.threads=1 (does not change the budget)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    if msg := report_notes_problem(ROOT / "docs" / "results" / "token_weighting.md"):  # before hours of runs
        p.error(msg)
    extra = ([f"train.max_steps={args.steps}"] if args.steps else []) + list(args.set)
    base = ROOT / args.runs_dir
    results: dict = {}
    for m in args.methods:
        results[m] = {}
        for s in args.seeds:
            out = base / f"{m}-s{s}"
            if not args.report_only:
                run(m, s, out, extra)
            if (out / "summary.json").exists():
                results[m][s] = collect(out)
    docs = ROOT / "docs" / "results"
    docs.mkdir(parents=True, exist_ok=True)
    note = " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in (("methods", args.methods), ("seeds", args.seeds), ("steps", args.steps)) if v)
    report(results, docs / "token_weighting.md", docs / "token_weighting.png", note)
    print((docs / "token_weighting.md").read_text())


if __name__ == "__main__":
    main()
