#!/usr/bin/env python
"""Peak memory and time of one GRPO policy-update step: our chunked forward vs TRL 1.16's fused LM head.

The step (no generation): ``B`` sequences of ``P`` prompt + ``T`` completion tokens (random ids, no padding) go
through the trainer's ``_get_per_token_logps_and_entropies(model, ids, mask, T, compute_entropy=True)``, then
``posttrain.losses.policy_loss`` on random advantages (old log-probs = detached current ones, token-mean), then
``backward()`` into the trainable parameters (decoder + LM head; no optimizer step).  The trainer is
``PosttrainGRPOTrainer`` (which has ``ChunkedLogprobsMixin`` in its bases) built by TRL's constructor (so TRL's fused head is
installed and PEFT wraps the model as in training); ``ours`` runs the mixin (``chunked_logprobs=True``), ``trl``
the same trainer with ``chunked_logprobs=False`` (TRL's ``model(..., fused_lm_head=True)``).  Gradient
checkpointing is on (TRL's default; without it the decoder activations of 4 x 4096 tokens do not fit in 24 GiB).

Memory: each (method, fine-tuning, T) runs in a fresh subprocess with one torch thread.  The worker builds the
trainer, runs a warm-up step at T=16, drops the gradients, resets the kernel's peak-RSS counter (``echo 5 >
/proc/self/clear_refs``), records the RSS, runs the measured step and reads ``VmHWM``.  ``peak extra`` = VmHWM -
RSS before the step (what the step itself needed: activations, LM-head tiles, gradient buffers); ``peak RSS`` is
the whole process's VmHWM after the reset (model, optimizer-free trainer, Python).  Where clear_refs is
unavailable, ``ru_maxrss`` is used (an upper bound).  Workers run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc's
default dynamic threshold serves tensors up to 32 MiB from the heap, whose freed pages mostly stay resident, so the
first large step's RSS grew ~6x above its live tensors (and a second identical step then looked cheap); with a
fixed threshold every tensor is mmapped and returned on free, and the high-water mark tracks live memory.  Time:
wall clock and process CPU time of the measured step (one sample; the machine is shared, so wall time moves with
the load; CPU time is steadier).  Ratios are ours / TRL of the same row; configurations run one at a
time, each length's ``ours`` and ``trl`` back to back.

    python scripts/bench_grpo_step_memory.py                     # SmolLM2-135M, LoRA + full, T = 256 1024 4096
    python scripts/bench_grpo_step_memory.py --T 256 --ft lora   # a subset
    python scripts/bench_grpo_step_memory.py --quick             # tiny model, T = 32 (smoke test)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MEM, TARGET_TIME = 0.5, 1.1  # ours / TRL at the longest length (issue)
MiB = 1024 ** 2
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ----------------------------------------------------------------------------------------------- worker side
from _memory import peak_bytes as _peak_bytes  # noqa: E402 - the scripts directory is on sys.path
from _memory import reset_peak as _reset_peak  # noqa: E402
from _memory import rss_bytes as _rss_bytes  # noqa: E402


def _worker(cfg: dict) -> dict:
    import tempfile

    import torch

    torch.set_num_threads(cfg["threads"])
    from trl import GRPOConfig

    from posttrain.data import arithmetic_problems
    from posttrain.losses import policy_loss
    from posttrain.models import load_model_and_tokenizer, load_tiny_model
    from posttrain.trainers import PosttrainGRPOTrainer as _T  # ChunkedLogprobsMixin is in its bases

    model, tok = load_tiny_model() if cfg["model"] == "tiny" else load_model_and_tokenizer(cfg["model"])
    peft_config = None
    if cfg["ft"] == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    b, p, t = cfg["B"], cfg["P"], cfg["T"]
    args = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_grpo_step_"), per_device_train_batch_size=b,
                      num_generations=b, max_completion_length=t, use_cpu=True, bf16=False, report_to="none",
                      max_steps=1, gradient_checkpointing=cfg["gc"], save_strategy="no")
    tr = _T(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
            train_dataset=arithmetic_problems(b, low=1, high=9), processing_class=tok, peft_config=peft_config)
    tr.chunked_logprobs = cfg["method"] == "ours"
    net = tr.model
    if cfg["gc"]:
        base = net.get_base_model() if hasattr(net, "get_base_model") else net
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net.train()
    g = torch.Generator().manual_seed(0)

    def step(completion_len: int) -> None:
        ids = torch.randint(10, len(tok) - 1, (b, p + completion_len), generator=g)
        att = torch.ones_like(ids)
        logps, _ent, _ = tr._get_per_token_logps_and_entropies(net, ids, att, completion_len, compute_entropy=True)
        mask = att[:, -completion_len:].float()
        adv = torch.randn(b, generator=g)
        loss, _ = policy_loss(logps, logps.detach(), adv, mask)
        loss.backward()

    step(16)  # warm-up: kernels, allocator, lazily built buffers
    net.zero_grad(set_to_none=True)
    reset_ok = _reset_peak()
    before = _rss_bytes()
    t0 = time.perf_counter()
    c0 = time.process_time()
    step(t)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_bytes(reset_ok)
    trainable = sum(q.numel() for q in net.parameters() if q.requires_grad)
    return {"wall": wall, "cpu": cpu, "peak_extra": peak - before, "peak_rss": peak, "rss_before": before,
            "peak_exact": reset_ok, "trainable": trainable, "gc": bool(getattr(
                net.get_base_model() if hasattr(net, "get_base_model") else net, "is_gradient_checkpointing", False))}


# ----------------------------------------------------------------------------------------------- driver side
def _run(cfg: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg["threads"]), "MKL_NUM_THREADS": str(cfg["threads"]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_row(ft, t, method, r, ref):
    if "error" in r:
        return f"| {ft} | {t} | {method} | error: {r['error'][:80]} | | | | | | | |"
    ratios = ["", "", "", ""]
    if ref is not None and "error" not in ref:
        ratios = [f"{r['peak_extra'] / ref['peak_extra']:.3f}", f"{r['peak_rss'] / ref['peak_rss']:.3f}",
                  f"{r['wall'] / ref['wall']:.3f}", f"{r['cpu'] / ref['cpu']:.3f}"]
    return (f"| {ft} | {t} | {method} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_extra'] / MiB:.0f} | "
            f"{r['peak_rss'] / MiB:.0f} | "
            + " | ".join(ratios) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="tiny model, T=32, B=2 (smoke test)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096], help="completion lengths")
    ap.add_argument("--B", type=int, default=4, help="sequences per step")
    ap.add_argument("--P", type=int, default=64, help="prompt length")
    ap.add_argument("--ft", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--no-gc", action="store_true", help="gradient checkpointing off")
    ap.add_argument("--json", help="also write the raw results here")
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker))))
        return 0
    if a.quick:
        a.model, a.T, a.B, a.P = "tiny", [32], 2, 8
    results = []
    print(f"model={a.model} B={a.B} P={a.P} threads={a.threads} gradient_checkpointing={not a.no_gc}", flush=True)
    for ft in a.ft:
        for t in a.T:
            for method in ("trl", "ours"):
                cfg = {"model": a.model, "ft": ft, "T": t, "B": a.B, "P": a.P, "method": method,
                       "threads": a.threads, "gc": not a.no_gc}
                r = _run(cfg)
                results.append((cfg, r))
                print(f"  {ft} T={t} {method}: {r}", file=sys.stderr, flush=True)
    print("\n| fine-tuning | T | method | wall s | cpu s | peak extra MiB | peak RSS MiB | peak extra ours/TRL | "
          "peak RSS ours/TRL | wall ours/TRL | cpu ours/TRL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    by_key = {(c["ft"], c["T"], c["method"]): r for c, r in results}
    for c, r in results:
        ref = by_key.get((c["ft"], c["T"], "trl")) if c["method"] == "ours" else None
        print(_fmt_row(c["ft"], c["T"], c["method"], r, ref))
    longest = max(a.T)
    verdicts = []
    for ft in a.ft:
        o, t = by_key.get((ft, longest, "ours")), by_key.get((ft, longest, "trl"))
        if o and t and "error" not in o and "error" not in t:
            mem, tim, cpu = o["peak_extra"] / t["peak_extra"], o["wall"] / t["wall"], o["cpu"] / t["cpu"]
            verdicts.append(f"{ft} T={longest}: peak extra {mem:.3f} ({'PASS' if mem <= TARGET_MEM else 'MISS'} "
                            f"<= {TARGET_MEM}), wall {tim:.3f} / cpu {cpu:.3f} "
                            f"({'PASS' if max(tim, cpu) <= TARGET_TIME else 'MISS'} <= {TARGET_TIME})")
    print("\nTargets (ours/TRL at the longest length): " + ("; ".join(verdicts) or "n/a"))
    if any(not r.get("peak_exact", True) for _, r in results if "error" not in r):
        print("note: clear_refs unavailable, peaks are ru_maxrss (upper bounds)")
    if a.json:
        Path(a.json).write_text(json.dumps([{"config": c, "result": r} for c, r in results], indent=1))
    return 1 if any("error" in r for _, r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
