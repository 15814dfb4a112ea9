"""Overhead of token weighting in a real GRPO run: STEER + high-entropy mask (and TW-GRPO) vs plain GRPO.

Each run is a separate `posttrain run` process on the same recipe, model, data and seed; variants are interleaved
(A B C A B C …) so machine noise hits all of them alike. Per run: the median TRL `step_time` over the steps after
the first (warm-up), and the process's peak RSS (``os.wait4`` rusage of that child). Printed: medians over runs and
the ratios to plain GRPO, with the targets (≤ 1.05× time, ≤ 1.05× memory for STEER + 80/20).

    python scripts/bench_token_weighting.py                          # SmolLM2-135M, 6 steps, 3 rounds
    python scripts/bench_token_weighting.py --model tiny --steps 4 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": [],
    "steer+80/20": ["weighting.tokens=[{name: steer}, {name: high_entropy, top_fraction: 0.2}]"],
    "tw_grpo": ["weighting.tokens=[{name: tw_grpo, alpha: 1.7}]"],
}


def run_once(variant: str, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "posttrain", "run", args.recipe, f"output.dir={out}", f"model.name={args.model}",
           f"train.max_steps={args.steps}", "eval.enabled=false", "output.save_model=false", "output.plots=false",
           f"model.threads={args.threads}", *VARIANTS[variant]]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    if status != 0:
        raise SystemExit(f"{variant} run failed:\n{err[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in rows if isinstance(r.get("step_time"), (int, float))][1:]
    return {"step_time": statistics.median(times), "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/quickstart.yaml")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    results: dict = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in args.variants:
                res = run_once(v, args, Path(tmp) / f"{r}-{v.replace('/', '_').replace('+', '_')}")
                results[v].append(res)
                print(f"round {r + 1} {v:<12} step {res['step_time']:.2f} s  peak RSS {res['peak_rss_mb']:.0f} MB",
                      flush=True)
    base_t = statistics.median(x["step_time"] for x in results["plain"])
    base_m = statistics.median(x["peak_rss_mb"] for x in results["plain"])
    print(f"\nmodel {args.model}, {args.steps} steps/run (first excluded), {args.rounds} interleaved rounds")
    print(f"{'variant':<14}{'step s':>8}{'time ×':>8}{'RSS MB':>9}{'mem ×':>8}")
    for v, rs in results.items():
        t = statistics.median(x["step_time"] for x in rs)
        m = statistics.median(x["peak_rss_mb"] for x in rs)
        verdict = ""
        if v == "steer+80/20":
            ok = t / base_t <= 1.05 and m / base_m <= 1.05
            verdict = "  PASS (≤1.05× both)" if ok else "  FAIL (target ≤1.05× time and memory)"
        print(f"{v:<14}{t:>8.2f}{t / base_t:>8.3f}{m:>9.0f}{m / base_m:>8.3f}{verdict}")


if __name__ == "__main__":
    main()
