"""Evidence for issue 6: DPO vs IPO vs β-DPO vs MADPO (optionally RPO) on three preference-data quality levels.

Every method runs the same set-up (`recipes/dpo.yaml` and its `extends:` children; IPO is `recipes/dpo.yaml` with
`train.loss_type=[ipo]`), the same seeds and the same policy step budget, on the `preferences` data at quality high /
medium / low (0 / 20 / 40 % of the labels flipped; `data.train.args.quality`). Each run is its own `posttrain run`
process. Collected per run:

- the gold reward (VADER positivity in [0, 1], the recipes' `rewards.0` = eval scorer) of greedy replies to the
  held-out tweets, before and after training (from the run's `summary.json`);
- a KL(policy ‖ reference) estimate, computed here after training from the saved model and the base model (the
  DPO reference: LoRA runs train adapters on it, so the reference is the base weights). See `kl_estimate`;
- a paired gain: per held-out prompt, the gold reward of the saved model's greedy reply minus the base model's
  (generated once, `<runs-dir>/base_greedy.json`), with its standard error over prompts. That is the evaluation
  noise of one run, to read beside the seed-to-seed spread (the training noise). See `paired_gain`.

Written: `<out-dir>/dpo.md` (tables: method × level, mean ± sd over seeds; every run; the MADPO paper's own reported
table from methods.md for reference) and `<out-dir>/dpo.png`.

    python scripts/compare_dpo.py --set model.threads=1 train.save_steps=10   # 4 methods x 3 levels x 2 seeds
    python scripts/compare_dpo.py --methods dpo madpo --levels low --seeds 0 1 2
    python scripts/compare_dpo.py --report-only                          # re-read finished runs, rewrite the report
    python scripts/compare_dpo.py --tiny --steps 2 --seeds 0 --levels high --runs-dir /tmp/cmpdpo   # smoke test

Runs land in `<runs-dir>/<method>-<level>-s<seed>/` (default `runs/compare_dpo`, with `--tiny` `runs/compare_dpo_tiny`).
A finished run (summary.json, and a resolved recipe equal to the planned one apart from `output.*` and
`model.threads`) is reused, so an interrupted comparison continues where it stopped; a stale one is re-run.
The saved model is deleted once its KL is in `kl.json` (keep it with `--keep-models`). `--tiny` uses the `tiny_*`
twins (a random tiny model: a smoke test, never evidence) and writes its report into the runs dir unless
`--out-dir` is given; it refuses to write into docs/results.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# method -> (recipe file under recipes/, without the tiny_ prefix; extra overrides)
METHODS = {
    "dpo": ("dpo.yaml", []),
    "ipo": ("dpo.yaml", ["train.loss_type=[ipo]"]),
    "beta_dpo": ("dpo_beta.yaml", []),
    "madpo": ("dpo_madpo.yaml", []),
    "rpo": ("dpo_rpo.yaml", []),
}
DEFAULT_METHODS = ["dpo", "ipo", "beta_dpo", "madpo"]
LEVELS = ["high", "medium", "low"]
LABEL_NOISE = {"high": "0 %", "medium": "20 %", "low": "40 %"}

# methods.md D12, "Headline results [README, IMDB sentiment, mean gold reward]": the MADPO repository's reported
# numbers on its own set-up. Copied as given there; nothing else about that table (scale, seeds, spread) is given.
PAPER = {
    "high": {"madpo": "2.23", "beta_dpo": "1.67", "dpo": "1.62", "ipo": "0.35"},
    "medium": {"madpo": "2.23", "beta_dpo": "1.84", "dpo": "1.71", "ipo": "0.31"},
    "low": {"madpo": "1.95", "beta_dpo": "1.76", "dpo": "1.48", "ipo": "0.10"},
}
IGNORED_FOR_REUSE = ("output", "model.threads")


# ----------------------------------------------------------------------------------------------------- planning
def recipe_path(method: str, tiny: bool) -> str:
    return f"recipes/{'tiny_' if tiny else ''}{METHODS[method][0]}"


def overrides_for(method: str, level: str, seed: int, steps, extra: list[str]) -> list[str]:
    """The recipe overrides of one run (output.* excluded)."""
    return [*METHODS[method][1], f"data.train.args.quality={level}", f"seed={seed}",
            *([f"train.max_steps={steps}"] if steps else []), *extra]


def _strip(d: dict) -> dict:
    d = json.loads(json.dumps(d))  # deep copy, YAML/JSON-normalised
    for key in IGNORED_FOR_REUSE:
        node, *rest = key.split(".")
        if rest:
            d.get(node, {}).pop(rest[0], None)
        else:
            d.pop(node, None)
    return d


def planned_recipe(method: str, tiny: bool, overrides: list[str]) -> dict:
    """The validated recipe a run will use (raises posttrain's one-line RecipeError on a bad override)."""
    sys.path.insert(0, str(ROOT))
    from posttrain.recipes import load_recipe

    return load_recipe(ROOT / recipe_path(method, tiny), overrides).model_dump(mode="json")


def run_state(out: Path, planned: dict) -> str:
    """'done' (finished, same recipe), 'stale' (finished, different recipe), 'partial' (same recipe, not finished,
    a complete checkpoint to resume from: only with train.save_steps) or 'none'."""
    import yaml

    if not (out / "recipe.resolved.yaml").is_file():
        return "none"
    same = _strip(yaml.safe_load((out / "recipe.resolved.yaml").read_text())) == _strip(planned)
    s = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    if "stopped" not in s and "after" in s.get("eval", {}):
        return "done" if same else "stale"
    from posttrain.trainers.checkpointing import latest_complete_checkpoint

    return "partial" if same and latest_complete_checkpoint(out / "trainer") is not None else "none"


def run(method: str, tiny: bool, overrides: list[str], out: Path, *, resume: bool = False) -> bool:
    cmd = [sys.executable, "-m", "posttrain", "run", recipe_path(method, tiny), *overrides, f"output.dir={out}",
           "output.overwrite=true", "output.save_model=true", *(["--resume"] if resume else [])]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    res = subprocess.run(cmd, cwd=ROOT)
    print(f"[compare_dpo] {out.name}: exit {res.returncode} after {time.time() - t0:.0f} s", flush=True)
    return res.returncode == 0


# ---------------------------------------------------------------------------------------------------------- KL
def kl_estimate(policy, ref, tokenizer, prompts, *, max_new_tokens: int, samples: int = 2, seed: int = 0,
                batch_size: int = 16) -> dict:
    """KL(π ‖ π_ref) of the reply distribution (temperature 1, at most ``max_new_tokens`` tokens, ending at EOS) on
    ``prompts``, plus a greedy-reply diagnostic. Per prompt, ``samples`` replies y ~ π are sampled and

    - ``kl_seq``: Σ_t KL(π(·|x, y_<t) ‖ π_ref(·|x, y_<t)), the exact next-token KL over the whole vocabulary,
      summed along the sampled reply. By the chain rule its expectation over y ~ π is the sequence-level KL, so
      the mean over samples and prompts is an unbiased estimate of E_x KL(π(·|x) ‖ π_ref(·|x)) (nats per reply),
      with a lower variance than the plain Monte-Carlo log-ratio; always >= 0;
    - ``kl_seq_mc``: Σ_t log π(y_t) - log π_ref(y_t) on the same samples (the plain unbiased estimator; can be < 0),
      a cross-check;
    - ``kl_per_token``: Σ kl_seq / Σ reply tokens;
    - ``greedy_logratio_per_token``: mean per-token log π - log π_ref on the policy's greedy reply (the replies the
      gold reward scores). Not a KL (greedy replies are not samples of π); it says how far the evaluated replies
      moved from what the reference would assign.

    Prompts are rendered and batched as in evaluation (:func:`posttrain.data.render_prompt`, left padding,
    ``batch_size`` prompts); the reply tokens are scored as generated (no re-tokenisation), EOS included, nothing
    after it. The policy's log-probs are the logits ``generate`` returned while sampling; the reference scores the
    same token ids in one forward pass (position ids from the attention mask, as ``generate`` makes them).
    """
    import torch

    from posttrain.data import render_prompt

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    policy.eval()
    ref.eval()
    torch.manual_seed(seed)
    kl_seq, kl_mc, lens, greedy_lr, greedy_len, greedy_text = [], [], [], [], [], []
    t0 = time.time()
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # as in evaluation: batches of left-padded prompts
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer([render_prompt(x, tokenizer) for x in prompts[start:start + batch_size]],
                                return_tensors="pt", padding=True, add_special_tokens=False)
                b, p = enc["input_ids"].shape
                gen = dict(**enc, output_logits=True, return_dict_in_generate=True, max_new_tokens=max_new_tokens,
                           pad_token_id=pad, eos_token_id=eos)
                greedy = policy.generate(do_sample=False, temperature=None, top_p=None, top_k=None, **gen)
                sampled = policy.generate(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                          num_return_sequences=samples, **gen)
                # rows: b greedy replies, then b * samples sampled ones (each prompt's samples consecutive)
                width = max(greedy.sequences.shape[1], sampled.sequences.shape[1])
                seqs = torch.full((b * (1 + samples), width), pad, dtype=torch.long)
                seqs[:b, : greedy.sequences.shape[1]] = greedy.sequences
                seqs[b:, : sampled.sequences.shape[1]] = sampled.sequences
                # the policy's log-probs: the raw logits generate computed for each reply token; with temperature 1
                # and no top-k / top-p they are exactly the distribution sampled from (no second forward pass)
                pol_logits = torch.zeros(seqs.shape[0], width - p, greedy.logits[0].shape[-1])
                pol_logits[:b, : len(greedy.logits)] = torch.stack(greedy.logits, 1).float()
                pol_logits[b:, : len(sampled.logits)] = torch.stack(sampled.logits, 1).float()
                reply = seqs[:, p:]
                is_eos = (reply == eos).long()
                valid = (is_eos.cumsum(1) - is_eos) == 0  # up to and including the first EOS
                att = torch.cat([enc["attention_mask"], enc["attention_mask"].repeat_interleave(samples, 0)])
                att = torch.cat([att, valid.long()], 1)
                pos = (att.cumsum(-1) - 1).masked_fill(att == 0, 0)  # as generate does for left padding
                tok_ratio = torch.empty(reply.shape)
                tok_kl = torch.empty(reply.shape)
                for r in range(0, seqs.shape[0], batch_size):  # the reference, a few rows at a time (memory)
                    sl = slice(r, r + batch_size)
                    ref_logits = ref(input_ids=seqs[sl], attention_mask=att[sl], position_ids=pos[sl],
                                     logits_to_keep=width - p + 1).logits[:, :-1].float()
                    lp_ref = torch.log_softmax(ref_logits, -1)
                    lp_pol = torch.log_softmax(pol_logits[sl], -1)
                    y = reply[sl, :, None]
                    tok_ratio[sl] = (lp_pol.gather(-1, y) - lp_ref.gather(-1, y))[..., 0]
                    tok_kl[sl] = (lp_pol.exp() * (lp_pol - lp_ref)).sum(-1).clamp(min=0)  # >= 0 up to float noise
                v = valid.float()
                n = v.sum(1)
                greedy_lr += ((tok_ratio[:b] * v[:b]).sum(1) / n[:b].clamp(min=1)).tolist()
                greedy_len += n[:b].tolist()
                greedy_text += [tokenizer.decode(reply[i][valid[i]].tolist(), skip_special_tokens=True)
                                for i in range(b)]
                kl_seq += (tok_kl[b:] * v[b:]).sum(1).tolist()
                kl_mc += (tok_ratio[b:] * v[b:]).sum(1).tolist()
                lens += n[b:].tolist()
    finally:
        tokenizer.padding_side = old_side

    def se(xs):
        return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0

    return {
        "estimator": "samples y ~ policy (temperature 1); kl_seq = sum over reply tokens of the exact next-token "
                     "KL(policy || reference); kl_seq_mc = sum of log-ratios; nats per reply",
        "n_prompts": len(prompts), "samples_per_prompt": samples, "max_new_tokens": max_new_tokens, "seed": seed,
        "kl_seq": statistics.mean(kl_seq), "kl_seq_se": se(kl_seq),
        "kl_seq_mc": statistics.mean(kl_mc), "kl_seq_mc_se": se(kl_mc),
        "kl_per_token": sum(kl_seq) / max(sum(lens), 1), "mean_reply_tokens": statistics.mean(lens),
        "greedy_logratio_per_token": statistics.mean(greedy_lr),
        "greedy_mean_reply_tokens": statistics.mean(greedy_len),
        "seconds": round(time.time() - t0, 1), "greedy_replies": greedy_text,
    }


def eval_dataset(recipe: dict):
    """The recipe's held-out ``data.eval`` dataset (prompts plus the columns its rewards read)."""
    sys.path.insert(0, str(ROOT))
    from posttrain.data import DATASETS

    ev = recipe["data"]["eval"]
    return DATASETS.get(ev["name"])(**ev.get("args", {}))


def kl_for_run(out: Path, *, samples: int, seed: int) -> dict:
    """Load ``<out>/model`` (the trained policy, LoRA merged) and the recipe's base model, and estimate the KL on the
    recipe's held-out ``data.eval`` prompts with the recipe's ``eval.max_new_tokens``; written to ``kl.json``."""
    import torch
    import yaml

    sys.path.insert(0, str(ROOT))
    from posttrain.models import load_model_and_tokenizer

    recipe = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    torch.set_num_threads(int(summary.get("threads") or 1))
    m = recipe["model"]
    dtype = getattr(torch, m.get("dtype", "float32"))
    policy, tok = load_model_and_tokenizer(str(out / "model"), dtype=dtype)
    ref, _ = load_model_and_tokenizer(m["name"], dtype=dtype, cache_dir=m.get("cache_dir"),
                                      trust_remote_code=m.get("trust_remote_code", False))
    prompts = list(eval_dataset(recipe)["prompt"])
    res = kl_estimate(policy, ref, tok, prompts, max_new_tokens=recipe["eval"]["max_new_tokens"], samples=samples,
                      seed=seed, batch_size=recipe["eval"]["batch_size"])
    # the saved model must be the evaluated policy: its greedy replies should equal the run's eval examples (same
    # prompts, batches and padding; the merged weights can still flip a rare near-tie token)
    examples = summary["eval"]["after"].get("examples") or []
    res["greedy_matches_eval"] = [sum(e["completion"] == t for e, t in zip(examples, res["greedy_replies"])),
                                  len(examples)]
    (out / "kl.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


# ---------------------------------------------------------------------------------------- paired gain vs base
def gold_spec(recipe: dict) -> dict:
    """The recipe's gold reward: ``eval.reward``, else ``rewards.0``."""
    return recipe["eval"].get("reward") or recipe["rewards"][0]


def gold_scores(recipe: dict, texts: list[str]) -> list[float]:
    """The recipe's gold reward (``eval.reward``, else ``rewards.0``) of ``texts``, one reply per held-out prompt in
    order, scored exactly as the runs' own evaluation scores them (`posttrain.evaluation.score_replies`)."""
    sys.path.insert(0, str(ROOT))
    from posttrain.evaluation import score_replies
    from posttrain.rewards import build_reward

    spec = gold_spec(recipe)
    return score_replies(build_reward(spec["name"], dict(spec.get("args") or {})), eval_dataset(recipe), texts)


def base_setup(recipe: dict) -> dict:
    """What the base model's greedy replies depend on: the key of their cache (and, with `gold_spec`, of their
    scores)."""
    m = recipe["model"]
    return {"model": m["name"], "dtype": m.get("dtype", "float32"), "eval_data": recipe["data"]["eval"],
            "max_new_tokens": recipe["eval"]["max_new_tokens"], "batch_size": recipe["eval"]["batch_size"]}


def base_greedy(runs_dir: Path, recipe: dict) -> list[str]:
    """The base model's greedy replies to the held-out prompts (the "before" policy of every run), generated with
    the same code as the runs' replies in ``kl.json``; cached in ``<runs-dir>/base_greedy.json`` per set-up."""
    import torch

    sys.path.insert(0, str(ROOT))
    from posttrain.models import load_model_and_tokenizer

    m, key = recipe["model"], base_setup(recipe)
    path = runs_dir / "base_greedy.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == json.loads(json.dumps(key)):
            return cached["greedy_replies"]
    torch.set_num_threads(int(m.get("threads") or 1))
    base, tok = load_model_and_tokenizer(m["name"], dtype=getattr(torch, key["dtype"]), cache_dir=m.get("cache_dir"),
                                         trust_remote_code=m.get("trust_remote_code", False))
    prompts = list(eval_dataset(recipe)["prompt"])
    res = kl_estimate(base, base, tok, prompts, max_new_tokens=key["max_new_tokens"], samples=1,
                      batch_size=key["batch_size"])
    runs_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "greedy_replies": res["greedy_replies"]}, indent=2) + "\n")
    return res["greedy_replies"]


def paired_gain(after: list[float], before: list[float]) -> dict:
    """Mean per-prompt gain (after − before on the same held-out prompt) and its standard error over prompts: the
    evaluation noise of one run's gain, to set beside the seed-to-seed spread (the training noise)."""
    d = [a - b for a, b in zip(after, before) if math.isfinite(a) and math.isfinite(b)]
    if not d:
        return {"gain": None, "se": None, "n": 0}
    return {"gain": statistics.mean(d), "se": statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0,
            "n": len(d)}


# ----------------------------------------------------------------------------------------------------- collect
def collect(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in rows if "loss" in r and "train_runtime" not in r]
    last = steps[-1] if steps else {}
    kl = json.loads((out / "kl.json").read_text()) if (out / "kl.json").is_file() else None
    rm = s.get("reward_model") or {}
    tm = s.get("train_metrics") or {}
    # A resumed run's train_seconds cover only the steps of its last process; transformers' train_steps_per_second
    # counts the same steps, so their product recovers how many steps that was (s/step stays per step). The rate
    # is logged rounded to 3 decimals: within that rounding, the run trained all its steps in one process.
    steps_timed = s.get("global_step")
    if tm.get("train_runtime") and tm.get("train_steps_per_second") and steps_timed:
        product = tm["train_runtime"] * tm["train_steps_per_second"]
        if abs(product - steps_timed) > 0.5 + 0.0005 * tm["train_runtime"]:
            steps_timed = round(product)
    return {
        "before": s["eval"]["before"]["mean_score"], "after": s["eval"]["after"]["mean_score"],
        "n": s["eval"]["after"]["n"], "steps": s.get("global_step"), "train_seconds": s.get("train_seconds"),
        "steps_timed": steps_timed,
        "wall_seconds": s.get("wall_seconds"), "threads": s.get("threads"),
        "margin_last": last.get("rewards/margins"), "acc_last": last.get("rewards/accuracies"),
        "kl": kl, "rm_seconds": rm.get("train_seconds"), "rm_agrees_with_gold": rm.get("agrees_with_gold"),
        "truncated_after": s["eval"]["after"].get("truncated_fraction"),
    }


def _mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _f(x, fmt=".3f", na="n/a"):
    return na if x is None else format(x, fmt)


def _ms(xs, fmt=".3f"):
    m, sd = _mean_sd(xs)
    return "n/a" if m is None else f"{m:{fmt}} ± {sd:{fmt}}"


# ------------------------------------------------------------------------------------------------------ report
def report(results: dict, out_md: Path, out_png: Path, *, command: str, tiny: bool, setup: dict,
           missing: list[str] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posttrain.reporting import write_report

    levels = [lv for lv in LEVELS if any(results[m].get(lv) for m in results)]
    methods = list(results)
    lines = ["# DPO variants under label noise (issue 6 evidence)", ""]
    if tiny:
        lines += ["> **Smoke test on the tiny random model (`--tiny`). These numbers mean nothing; they only show that "
                  "the pipeline runs end to end.**", ""]
    lines += [f"Produced by `{command}`.", ""]
    if missing:
        lines += [f"**Not finished (not in the tables): {', '.join(missing)}.**", ""]
    lines += [
        f"- Set-up: `{setup['recipe']}` and its children (IPO = `train.loss_type=[ipo]` on it), model "
        f"`{setup['model']}`, {setup['steps']} policy steps of {setup['batch']} pairs, lr {setup['lr']}, "
        f"β {setup['beta']}, for every method."
        + (f" MADPO also trains its Bradley–Terry reward model first (`reward_model.train`, {setup['rm_steps']} "
           "steps) on the same noisy pairs; that stage is extra." if "madpo" in methods else ""),
        "- Data: the `preferences` pairs (tweet prompts, two sampled replies, labelled by gold VADER positivity); "
        "quality high / medium / low flips 0 / 20 / 40 % of the labels (the same pairs and flips for every method "
        "and seed; the seed changes the LoRA init and the batch order).",
        f"- Gold reward: mean VADER positivity in [0, 1] of greedy replies ({setup['eval_tokens']} tokens) to "
        f"{setup['eval_n']} held-out tweets. \"before\" is the base model (identical for every run).",
        "- KL: KL(policy ‖ reference) in nats per reply, estimated after training: "
        f"{setup['kl_samples']} replies per held-out prompt sampled from the trained policy at temperature 1, "
        "summing the exact next-token KL over the vocabulary along each reply (unbiased, >= 0; see `kl_estimate` "
        "in the script). The reference is the base model.",
        "",
        "## Mean over seeds",
        "",
        "| level (label noise) | method | seeds | gold before | gold after (mean ± sd) | gain | a run's gain: eval "
        "se | KL nats/reply (mean ± sd) | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        for m in methods:
            runs = results[m].get(lv) or {}
            if not runs:
                continue
            rs = list(runs.values())
            b = _mean_sd([r["before"] for r in rs])[0]
            a = _mean_sd([r["after"] for r in rs])[0]
            sps = _mean_sd([r["train_seconds"] / (r.get("steps_timed") or r["steps"]) for r in rs
                            if r["train_seconds"] and (r.get("steps_timed") or r["steps"])])[0]
            ses = [r["paired"]["se"] for r in rs if (r.get("paired") or {}).get("se") is not None]
            lines.append(f"| {lv} ({LABEL_NOISE[lv]}) | {m} | {len(rs)} | {_f(b)} | {_ms([r['after'] for r in rs])} | "
                         f"{'n/a' if a is None or b is None else format(a - b, '+.3f')} | "
                         f"{_f(math.sqrt(statistics.mean(x * x for x in ses)) if ses else None)} | "
                         f"{_ms([r['kl']['kl_seq'] if r['kl'] else None for r in rs])} | {_f(sps, '.1f')} |")
    lines += ["", "Gold reward after training, mean over seeds (same layout as the paper's table below):", "",
              "| data quality | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for lv in levels:
        cells = [_f(_mean_sd([r["after"] for r in (results[m].get(lv) or {}).values()])[0]) for m in methods]
        lines.append(f"| {lv.capitalize()} | " + " | ".join(cells) + " |")

    lines += ["", "## Every run", "",
              "| level | method | seed | steps | before | after | paired gain (± se over prompts) | KL nats/reply "
              "(± se) | KL MC cross-check (± se) | "
              "KL/token | greedy log-ratio/token | saved model's greedy = eval's | final TRL reward margin | "
              "truncated after | train s | RM s | RM agrees with gold |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lv in levels:
        for m in methods:
            for seed, r in sorted((results[m].get(lv) or {}).items()):
                k = r["kl"] or {}
                pg = r.get("paired") or {}
                lines.append(
                    f"| {lv} | {m} | {seed} | {r['steps']} | {_f(r['before'])} | {_f(r['after'])} | "
                    + (f"{pg['gain']:+.3f} ± {pg['se']:.3f} | " if pg.get("gain") is not None else "n/a | ")
                    + (f"{k['kl_seq']:.3g} ± {k['kl_seq_se']:.2g} | {k['kl_seq_mc']:.3g} ± {k['kl_seq_mc_se']:.2g} | "
                       f"{k['kl_per_token']:.3g} | {k['greedy_logratio_per_token']:+.3g} | "
                       f"{'/'.join(map(str, k.get('greedy_matches_eval') or ['n/a']))} | " if k else
                       "n/a | n/a | n/a | n/a | n/a | ")
                    + f"{_f(r['margin_last'])} | {_f(r['truncated_after'], '.2f')} | {_f(r['train_seconds'], '.0f')}"
                    + (f" (last {r['steps_timed']} steps: resumed)" if r.get("steps_timed") not in (None, r["steps"])
                       else "") + " | "
                    f"{_f(r['rm_seconds'], '.0f', '')} | {_f(r['rm_agrees_with_gold'], '.2f', '')} |")
    lines += ["", "\"final TRL reward margin\": TRL's logged `rewards/margins` (β × implicit-reward gap on the "
              "training batch) at the last step. \"greedy log-ratio/token\": mean log π − log π_ref per token of "
              "the policy's greedy replies (not a KL). \"saved model's greedy = eval's\": of the run's logged eval "
              "examples, how many greedy replies of the saved model (re-generated for the KL) are identical "
              "(checks that the KL measures the evaluated policy; batching numerics can flip a rare token). "
              "KL n/a: no saved model was left to measure. \"paired gain\": mean over held-out prompts of the gold "
              "reward of the saved model's greedy reply minus the base model's on the same prompt, ± its standard "
              "error over prompts (the evaluation noise of one run; \"a run's gain: eval se\" above is its root mean "
              "square over seeds, to compare with the seed-to-seed sd, the training noise). It equals after − before "
              "when every greedy reply matches the evaluated one.", ""]

    lines += ["## For reference: the MADPO paper's reported table (its own set-up, not ours)", "",
              "Copied from `shared/methods.md` D12 (\"Headline results [README, IMDB sentiment, mean gold "
              "reward]\"). These are the MADPO repository's numbers on IMDB with its own gold sentiment reward, model "
              "(LoRA on Gemma) and label-noise levels; the scale of that reward is not given there, so the values are "
              "**not comparable** to the VADER positivity in [0, 1] above, only the ordering of methods is. Seeds, "
              "spread and KL are not available. RPO is not in that table.", "",
              "| data quality | MADPO | β-DPO | DPO | IPO |", "|---|---|---|---|---|"]
    for lv in LEVELS:
        p = PAPER[lv]
        lines.append(f"| {lv.capitalize()} | {p['madpo']} | {p['beta_dpo']} | {p['dpo']} | {p['ipo']} |")
    lines += ["", "methods.md also records: \"+33.3% (High) and +10.5% (Low) over the next best method\" (paper's "
              "claim, same set-up)."]
    write_report(out_md, "\n".join(lines))

    ncol = max(len(levels), 1)
    fig, axes = plt.subplots(2, ncol, figsize=(max(3.6 * ncol + 1, 7.0), 6.6), squeeze=False)
    for j, lv in enumerate(levels):
        ax, axk = axes[0][j], axes[1][j]
        befores = []
        for i, m in enumerate(methods):
            rs = list((results[m].get(lv) or {}).values())
            if not rs:
                continue
            befores += [r["before"] for r in rs]
            after = [r["after"] for r in rs]
            ax.bar(i, statistics.mean(after), color=f"C{i}", alpha=0.7)
            ax.scatter([i] * len(after), after, color="k", s=12, zorder=3)
            kls = [r["kl"]["kl_seq"] for r in rs if r["kl"]]
            if kls:
                axk.bar(i, statistics.mean(kls), color=f"C{i}", alpha=0.7)
                axk.scatter([i] * len(kls), kls, color="k", s=12, zorder=3)
        if befores:
            ax.axhline(statistics.mean(befores), color="gray", ls="--", lw=1, label="before (base model)")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{lv} quality ({LABEL_NOISE[lv]} flipped)", fontsize=9)
        for a in (ax, axk):
            a.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
        if j == 0:
            ax.set_ylabel("gold reward after (VADER)")
            axk.set_ylabel("KL(policy ‖ ref), nats/reply")
    fig.suptitle(("SMOKE TEST (tiny model) - " if tiny else "")
                 + "held-out gold reward after training and KL to the reference\n(bars: mean over seeds, dots: "
                 "seeds; dashed: base model)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------- main
def reproduce_command(args: argparse.Namespace) -> str:
    """The command line that re-creates a report: every flag that differs from its default, including where the
    runs and the report live (a report in another --out-dir must not point at a command that rewrites docs/results)."""
    parts = ["python scripts/compare_dpo.py"]
    for flag, val, default in (("--methods", args.methods, DEFAULT_METHODS), ("--levels", args.levels, LEVELS),
                               ("--seeds", args.seeds, [0, 1])):
        if val != default:
            parts.append(f"{flag} {' '.join(map(str, val))}")
    if args.steps:
        parts.append(f"--steps {args.steps}")
    if args.set:
        parts.append("--set " + " ".join(args.set))
    if args.tiny:
        parts.append("--tiny")
    if args.kl_samples != 2:
        parts.append(f"--kl-samples {args.kl_samples}")
    if args.runs_dir:
        parts.append(f"--runs-dir {args.runs_dir}")
    if args.out_dir:
        parts.append(f"--out-dir {args.out_dir}")
    return " ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--levels", nargs="+", default=LEVELS, choices=LEVELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=None, help="train.max_steps for every run (default: the recipe's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra recipe overrides for every run, e.g. model.threads=1")
    p.add_argument("--runs-dir", default=None, help="default runs/compare_dpo (runs/compare_dpo_tiny with --tiny)")
    p.add_argument("--out-dir", default=None, help="where dpo.md / dpo.png go (default docs/results; with --tiny "
                                                   "the runs dir)")
    p.add_argument("--tiny", action="store_true", help="use the tiny_* recipe twins (smoke test, not evidence)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing; re-read finished runs (still computes a missing KL if the model is there)")
    p.add_argument("--kl-samples", type=int, default=2, help="sampled replies per held-out prompt for the KL")
    p.add_argument("--keep-models", action="store_true", help="keep <run>/model after its KL is computed")
    args = p.parse_args(argv)

    base = Path(args.runs_dir or ("runs/compare_dpo_tiny" if args.tiny else "runs/compare_dpo"))
    base = base if base.is_absolute() else ROOT / base
    out_dir = Path(args.out_dir) if args.out_dir else (base if args.tiny else ROOT / "docs" / "results")
    out_dir = out_dir if out_dir.is_absolute() else ROOT / out_dir
    if args.tiny and out_dir.resolve() == (ROOT / "docs" / "results").resolve():
        p.error("--tiny runs are smoke tests: refusing to write them into docs/results (pass another --out-dir)")

    # validate every planned run before training anything (a bad override fails here, in one line)
    sys.path.insert(0, str(ROOT))
    from posttrain.recipes import RecipeError
    from posttrain.reporting import report_notes_problem

    if msg := report_notes_problem(out_dir / "dpo.md"):  # a broken notes block would stop the report after hours
        p.error(msg)

    plan = []
    for m in args.methods:
        for lv in args.levels:
            for s in args.seeds:
                ov = overrides_for(m, lv, s, args.steps, list(args.set))
                try:
                    planned = planned_recipe(m, args.tiny, ov)
                except RecipeError as exc:
                    p.error(f"{m}/{lv}/seed {s}: {exc}")
                plan.append((m, lv, s, ov, planned, base / f"{m}-{lv}-s{s}"))

    failed = []
    results: dict = {m: {} for m in args.methods}
    base_scores: dict = {}  # the base model's gold scores, once per base set-up and gold reward (one here)
    for m, lv, s, ov, planned, out in plan:
        state = run_state(out, planned)
        if not args.report_only and state != "done":
            if state == "stale":
                print(f"[compare_dpo] {out.name}: finished run has a different recipe; re-running", flush=True)
            ok = False
            if state == "partial":
                print(f"[compare_dpo] {out.name}: resuming from its last complete checkpoint", flush=True)
                ok = run(m, args.tiny, ov, out, resume=True)
            if not (ok or run(m, args.tiny, ov, out)):
                failed.append(out.name)
                continue
            state = "done"
        if state not in ("done", "stale"):
            continue
        if state == "stale":
            print(f"[compare_dpo] {out.name}: reporting a finished run whose recipe differs from the planned one",
                  flush=True)
        if not (out / "kl.json").is_file() and (out / "model").is_dir():
            try:
                k = kl_for_run(out, samples=args.kl_samples, seed=s)
                print(f"[compare_dpo] {out.name}: KL {k['kl_seq']:.3f} ± {k['kl_seq_se']:.3f} nats/reply "
                      f"({k['seconds']:.0f} s)", flush=True)
            except Exception as exc:  # a failed KL must not lose the run's other numbers
                print(f"[compare_dpo] {out.name}: KL failed: {type(exc).__name__}: {exc}", flush=True)
        if (out / "kl.json").is_file() and (out / "model").is_dir() and not args.keep_models:
            shutil.rmtree(out / "model")
        r = results[m].setdefault(lv, {})[s] = collect(out)
        if r["kl"] and r["kl"].get("greedy_replies"):
            try:  # the same held-out prompts before and after: a paired gain with its evaluation standard error
                import yaml

                recipe = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
                key = json.dumps([base_setup(recipe), gold_spec(recipe)], sort_keys=True, default=str)
                if key not in base_scores:
                    base_scores[key] = gold_scores(recipe, base_greedy(base, recipe))
                r["paired"] = paired_gain(gold_scores(recipe, r["kl"]["greedy_replies"]), base_scores[key])
            except Exception as exc:  # a failed extra must not lose the run's other numbers
                print(f"[compare_dpo] {out.name}: paired gain failed: {type(exc).__name__}: {exc}", flush=True)

    first = plan[0][4]
    rm_steps = next((planned["reward_model"]["train"].get("max_steps")
                     for m, _lv, _s, _ov, planned, _out in plan if m == "madpo"), None)
    setup = {"recipe": recipe_path("dpo", args.tiny), "model": first["model"]["name"],
             "steps": first["train"].get("max_steps"), "batch": first["train"].get("per_device_train_batch_size"),
             "lr": first["train"].get("learning_rate"), "beta": first["train"].get("beta"),
             "rm_steps": rm_steps if rm_steps is not None else "n/a",
             "eval_tokens": first["eval"]["max_new_tokens"], "eval_n": first["data"]["eval"]["args"].get("n"),
             "kl_samples": args.kl_samples}
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [out.name for m, lv, s, _ov, _pl, out in plan if s not in results[m].get(lv, {})]
    report(results, out_dir / "dpo.md", out_dir / "dpo.png", command=reproduce_command(args), tiny=args.tiny, setup=setup,
           missing=missing)
    print((out_dir / "dpo.md").read_text())
    if failed:
        print(f"[compare_dpo] failed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
