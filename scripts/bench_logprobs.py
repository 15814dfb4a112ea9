#!/usr/bin/env python
"""Benchmark per-token log-probs (+ entropy without grad), forward + backward, at SmolLM2's LM-head size.

Methods (each (method, T) pair runs in its own subprocess; pairs are interleaved across repeats):

* ``naive``   — textbook full-logits path: ``logits = h @ W.T``; ``logp = logits.log_softmax(-1)``;
  ``logp.gather(labels)``; entropy ``-(logp.exp() * logp).sum(-1)`` under ``no_grad``.
* ``chunked`` — ``posttrain.losses.selective_logprobs_and_entropy(h, W, labels)`` (default chunk sizes).
* ``trl``     — TRL 1.16's fused LM head: ``trl.trainer.utils.add_fused_lm_head(model, outputs=("log_probs",
  "entropy"))`` on a minimal causal-LM module whose backbone returns the given hidden states and whose head is
  ``nn.Linear(H, V)`` with the same weight, called with ``fused_lm_head=True`` (what GRPOTrainer/DPOTrainer do).

Every method computes d/dh and d/dW of ``sum(logps * g)`` (full fine-tuning: the LM head is trained; pass
``--frozen-head`` for the LoRA case, where W needs no gradient).

Peak memory: the worker allocates its inputs, runs a tiny warm-up, then resets the kernel's peak-RSS counter
(``echo 5 > /proc/self/clear_refs``) and reports ``VmHWM - RSS_before`` after the timed run, i.e. the extra
resident memory the method needed on top of its inputs. Where clear_refs is unavailable, ``ru_maxrss`` minus the
RSS before the run is used (an upper bound). Time: wall clock and process CPU time of one forward + backward per
subprocess; the table reports medians over ``--repeats`` subprocesses.

The naive path needs ~4 x B*T*V*4 bytes (26 GB at T=4096); before launching it the script checks MemAvailable
and skips with a message when the estimate does not fit (or < 20 GiB is free at T >= 4096). Skipped naive rows
are then extrapolated linearly in T from the largest measured T and marked ``*``.

    python scripts/bench_logprobs.py                       # T in 256 1024 4096, 3 repeats
    python scripts/bench_logprobs.py --T 256 1024 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ("naive", "chunked", "trl")
TARGET_MEM, TARGET_TIME = 0.25, 1.2  # chunked vs naive, from issue 3 (memory at T >= 1024)
GiB = 1024 ** 3


# ----------------------------------------------------------------------------------------------- worker side
from _memory import peak_bytes as _peak_bytes  # noqa: E402 - the scripts directory is on sys.path
from _memory import reset_peak as _reset_peak  # noqa: E402
from _memory import rss_bytes as _rss_bytes  # noqa: E402


def _make_step(method: str, weight, frozen: bool):
    import torch

    if method == "naive":
        def step(h, y, g):
            logits = h @ weight.T
            logp = logits.log_softmax(-1)
            lp = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            with torch.no_grad():
                ent = -(logp.exp() * logp).sum(-1)
            (lp * g).sum().backward()
            return ent
        return step

    if method == "chunked":
        from posttrain.losses import selective_logprobs_and_entropy

        def step(h, y, g):
            lp, ent = selective_logprobs_and_entropy(h, weight, y)
            (lp * g).sum().backward()
            return ent
        return step

    # TRL's fused head on a minimal causal LM: backbone = identity on inputs_embeds, head = nn.Linear(H, V)
    from types import SimpleNamespace

    import transformers
    from trl.trainer.utils import add_fused_lm_head

    class Backbone(torch.nn.Module):
        def forward(self, inputs_embeds=None, **kwargs):
            return SimpleNamespace(last_hidden_state=inputs_embeds)

    class TinyCausalLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = transformers.PretrainedConfig()
            self.base_model = Backbone()
            self.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            self.lm_head.weight = torch.nn.Parameter(weight, requires_grad=not frozen)

        def get_output_embeddings(self):
            return self.lm_head

        def forward(self, inputs_embeds=None, **kwargs):  # replaced by add_fused_lm_head (fused_lm_head=False path)
            return self.lm_head(inputs_embeds)

    model = TinyCausalLM()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))

    def step(h, y, g):
        # the fused head shifts internally (hidden[:, :-1] scores labels[:, 1:]): pad one position in front
        h_ext = torch.cat([h[:, :1], h], dim=1)
        y_ext = torch.cat([y[:, :1], y], dim=1)
        out = model(inputs_embeds=h_ext, labels=y_ext, fused_lm_head=True)
        (out.log_probs * g).sum().backward()
        return out.entropy
    return step


def worker(method: str, B: int, T: int, H: int, V: int, frozen: bool, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    weight = (0.02 * torch.randn(V, H)).requires_grad_(not frozen)
    hidden = torch.randn(B, T, H)
    labels = torch.randint(0, V, (B, T))
    upstream = torch.randn(B, T)
    step = _make_step(method, weight, frozen)
    # warm-up on a tiny slice (kernel selection, lazy inits), then drop its gradients
    step(hidden[:1, :8].clone().requires_grad_(), labels[:1, :8], upstream[:1, :8])
    weight.grad = None
    h = hidden.clone().requires_grad_()
    rss0 = _rss_bytes()
    reset_ok = _reset_peak()
    cpu0, t0 = time.process_time(), time.perf_counter()
    ent = step(h, labels, upstream)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = _peak_bytes(reset_ok)
    assert ent is not None and h.grad is not None
    return {"method": method, "T": T, "wall": wall, "cpu": cpu, "peak_extra": peak - rss0, "exact_peak": reset_ok,
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------- orchestrator side
def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _naive_fits(B: int, T: int, V: int) -> tuple[bool, str]:
    need = 4.2 * B * T * V * 4 + 1 * GiB  # logits, log-softmax, exp, product (+ slack)
    avail = _mem_available()
    floor = 20 * GiB if T >= 4096 else 0
    if avail < max(need, floor):
        return False, (f"skip naive at T={T}: needs ~{need / GiB:.1f} GiB, MemAvailable {avail / GiB:.1f} GiB"
                       + (" (< 20 GiB rule at T >= 4096)" if avail < floor else ""))
    return True, ""


def _launch(args, method: str, T: int) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--B", str(args.B), "--T", str(T),
           "--H", str(args.H), "--V", str(args.V)]
    if args.frozen_head:
        cmd.append("--frozen-head")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      env.get("PYTHONPATH")]))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"  {method} T={T} FAILED (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {method:8s} T={T:5d}  wall {res['wall']:7.2f}s  cpu {res['cpu']:7.2f}s  "
          f"peak +{res['peak_extra'] / 2**20:8.0f} MiB", flush=True)
    return res


def _summarise(runs: dict, Ts: list[int], methods: list[str]) -> list[dict]:
    rows = []
    measured_naive = {}  # T -> (wall, cpu, peak)
    for T in Ts:
        for m in methods:
            rs = runs.get((m, T), [])
            if rs:
                row = {"T": T, "method": m, "wall": statistics.median(r["wall"] for r in rs),
                       "cpu": statistics.median(r["cpu"] for r in rs), "peak": max(r["peak_extra"] for r in rs),
                       "n": len(rs), "extrapolated": False}
                rows.append(row)
                if m == "naive":
                    measured_naive[T] = row
    for T in Ts:  # extrapolate a skipped naive linearly in T from the largest measured T
        if "naive" in methods and T not in measured_naive and measured_naive:
            T0 = max(t for t in measured_naive if t < T) if any(t < T for t in measured_naive) else None
            if T0 is not None:
                base, k = measured_naive[T0], T / T0
                rows.append({"T": T, "method": "naive", "wall": base["wall"] * k, "cpu": base["cpu"] * k,
                             "peak": base["peak"] * k, "n": 0, "extrapolated": True})
    rows.sort(key=lambda r: (r["T"], methods.index(r["method"])))
    return rows


def _table(rows: list[dict]) -> str:
    naive = {r["T"]: r for r in rows if r["method"] == "naive"}
    lines = ["| T | method | wall s | cpu s | peak extra MiB | mem / naive | wall / naive | cpu / naive | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = naive.get(r["T"])
        star = "*" if (n and n["extrapolated"]) else ""
        mem_ratio = f"{r['peak'] / n['peak']:.3f}{star}" if n else "-"
        wall_ratio = f"{r['wall'] / n['wall']:.2f}{star}" if n else "-"
        cpu_ratio = f"{r['cpu'] / n['cpu']:.2f}{star}" if n else "-"
        verdict = ""
        if r["method"] == "chunked" and n:
            mem_ok = r["T"] < 1024 or r["peak"] <= TARGET_MEM * n["peak"]
            time_ok = r["wall"] <= TARGET_TIME * n["wall"]
            verdict = (f"mem {'PASS' if mem_ok else 'FAIL'}"
                       f"{'' if r['T'] >= 1024 else ' (n/a <1024)'}, time {'PASS' if time_ok else 'FAIL'}{star}")
        name = r["method"] + (" (extrapolated)" if r["extrapolated"] else "")
        lines.append(f"| {r['T']} | {name} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['peak'] / 2**20:.0f} | "
                     f"{mem_ratio} | {wall_ratio} | {cpu_ratio} | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--H", type=int, default=576)
    p.add_argument("--V", type=int, default=49152)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    p.add_argument("--frozen-head", action="store_true", help="W needs no gradient (LoRA / frozen LM head)")
    p.add_argument("--json", default=None, help="also write the raw runs here")
    p.add_argument("--worker", default=None, choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.B, args.T[0], args.H, args.V, args.frozen_head, args.threads)))
        return 0

    print(f"B={args.B} H={args.H} V={args.V} T={args.T} repeats={args.repeats} methods={args.methods} "
          f"frozen_head={args.frozen_head} MemAvailable={_mem_available() / GiB:.1f} GiB", flush=True)
    runs: dict = {}
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", flush=True)
        for T in args.T:
            for m in args.methods:
                if m == "naive":
                    ok, msg = _naive_fits(args.B, T, args.V)
                    if not ok:
                        print("  " + msg, flush=True)
                        continue
                res = _launch(args, m, T)
                if res:
                    runs.setdefault((m, T), []).append(res)
    rows = _summarise(runs, args.T, args.methods)
    print()
    print(_table(rows))
    print("\n* = ratio against a naive run extrapolated linearly in T (naive skipped: not enough memory).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": [r for rs in runs.values() for r in rs], "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
