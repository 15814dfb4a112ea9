"""What only the GRPO trainer can provide to strategies, as plain functions of the trainer (glue, no formulas).

Each function backs one service of :class:`posttrain.weighting.protocol.RolloutContext` (or a token-side input of
:class:`~posttrain.weighting.tokens.TokenBatch`); :class:`~posttrain.trainers.PosttrainGRPOTrainer` binds them to the
step's tensors. Every function is called on every process (they all-gather or all-reduce), in the same order.
"""
from __future__ import annotations

import logging
import math
import re
import time
from typing import List, Optional, Sequence, Tuple

import torch
from accelerate.utils import gather

from posttrain.errors import UserError
from posttrain.losses.policy import policy_gradient_surrogate
from posttrain.weighting.protocol import mix_rewards

logger = logging.getLogger("posttrain.trainers")


# --------------------------------------------------------------------------------------------- rollout-side services
def embed_completions(trainer, local_texts: Sequence[str]) -> torch.Tensor:
    """``[N, D]`` all-MiniLM-L6-v2 embeddings of every process's completions (each process embeds its own)."""
    from posttrain.rewards.similarity import encode_texts

    emb = torch.from_numpy(encode_texts(list(local_texts))).to(trainer.accelerator.device)
    return gather(emb)


@torch.no_grad()
def completion_logps(trainer, out: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logps, mask)`` of this process's completions under the rollout policy: TRL's ``old_per_token_logps`` when
    it computed them (the policy moves between rollout and update), else one no-grad forward (π_old = π_θ)."""
    mask = out["completion_mask"].float()
    logps = out.get("old_per_token_logps")
    if logps is None:
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention, out["completion_ids"].size(1),
            batch_size=trainer.args.per_device_train_batch_size)
    return logps, mask


def select_parameters(trainer, pattern: Optional[str]) -> List[torch.nn.Parameter]:
    """Trainable parameters whose name matches ``pattern`` (``re.search``; ``None``: all trainable ones)."""
    from posttrain.distributed import is_zero3

    if is_zero3(trainer):
        raise UserError("the per-objective policy gradients need whole parameters on every process; they do not "
                        "run under ZeRO-3 (use ZeRO-2 or no DeepSpeed)")
    model = trainer.accelerator.unwrap_model(trainer.model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if pattern is not None:
        named = [(n, p) for n, p in named if re.search(pattern, n)]
    if not named:
        raise UserError(f"no trainable parameter matches parameters={pattern!r}")
    logger.info("per-objective policy gradients over %d parameter tensors (%d values)", len(named),
                sum(p.numel() for _, p in named))
    return [p for _, p in named]


def policy_gradients(trainer, out: dict, advantages_KN: torch.Tensor, params: Sequence[torch.nn.Parameter],
                     local: slice) -> torch.Tensor:
    """``[K, P]``: row k is the gradient over ``params`` of the on-policy surrogate
    (:func:`~posttrain.losses.policy.policy_gradient_surrogate`) with advantages ``advantages_KN[k]`` (all processes'
    rows; this process uses ``local``), normalised by the completion tokens of all processes and summed over
    processes, so every rank holds the gradient of the global loss. One forward, ``K`` backward passes."""
    mask = out["completion_mask"].float()
    total_tokens = trainer.accelerator.reduce(mask.sum().detach(), reduction="sum").clamp(min=1.0)
    input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    model = trainer.accelerator.unwrap_model(trainer.model)  # no DDP / engine hooks: these backward passes are ours
    rows = []
    with torch.enable_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, attention, out["completion_ids"].size(1),
            batch_size=trainer.args.per_device_train_batch_size)
        for k in range(advantages_KN.size(0)):
            adv = advantages_KN[k][local].to(logps.device, logps.dtype)
            loss = policy_gradient_surrogate(logps, adv, mask, total_tokens)
            grads = torch.autograd.grad(loss, list(params), retain_graph=k + 1 < advantages_KN.size(0),
                                        allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                                   for g, p in zip(grads, params)]))
    return trainer.accelerator.reduce(torch.stack(rows), reduction="sum")


def _score(trainer, prompts, texts, ids, columns) -> torch.Tensor:
    """``[n, K]`` scores of completions by every reward function (NaN where a reward returned None or non-finite)."""
    conversational = bool(prompts) and isinstance(prompts[0], list)
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    out = torch.full((len(prompts), len(trainer.reward_funcs)), float("nan"), dtype=torch.float64)
    for j, fn in enumerate(trainer.reward_funcs):
        scores = fn(prompts=prompts, completions=completions, completion_ids=ids, trainer_state=trainer.state,
                    log_extra=lambda *a, **kw: None, log_metric=lambda *a, **kw: None, **columns)
        for i, v in enumerate(scores):
            if v is not None and math.isfinite(float(v)):
                out[i, j] = float(v)
    return out


def _greedy(trainer, prompts, max_new_tokens):
    from posttrain.distributed import full_policy
    from posttrain.evaluation import generate_greedy

    # every rank enters full_policy (under ZeRO-3 it all-gathers the weights and lifts DeepSpeed's hooks), then
    # generates its own share alone: shares may differ and greedy lengths differ, so no rank may wait for another
    # inside generate
    with full_policy(trainer) as model:
        if not prompts:
            return [], []
        return generate_greedy(model, trainer.processing_class, prompts, max_new_tokens=int(max_new_tokens),
                               batch_size=32, desc="greedy")


@torch.no_grad()
def evaluate_objectives(trainer, dataset, *, num_prompts: int = 32, max_new_tokens: Optional[int] = None) -> List[float]:
    """Greedy completions of the first ``num_prompts`` held-out prompts, mean score per reward function. Prompts are
    sharded over processes; sums and counts are all-reduced, so every rank gets the same vector."""
    if dataset is None or len(dataset) == 0:
        raise UserError("held-out evaluation of the objectives needs held-out prompts: set data.eval")
    n = min(int(num_prompts), len(dataset))
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    part = dataset.select(range(n)).select(range(rank, n, world))
    prompts = list(part["prompt"])
    k = len(trainer.reward_funcs)
    sums = torch.zeros(2, k, dtype=torch.float64, device=trainer.accelerator.device)
    texts, ids = _greedy(trainer, prompts, max_new_tokens or trainer.max_completion_length)
    if prompts:
        scores = _score(trainer, prompts, texts, ids, {c: list(part[c]) for c in part.column_names if c != "prompt"})
        valid = ~torch.isnan(scores)
        for j in range(k):
            vals = scores[valid[:, j], j].tolist()
            sums[0, j], sums[1, j] = math.fsum(vals), len(vals)
    sums = trainer.accelerator.reduce(sums, reduction="sum")
    if bool((sums[1] == 0).any()):
        bad = [trainer.reward_func_names[j] for j in range(k) if sums[1, j] == 0]
        raise UserError(f"held-out evaluation of the objectives: no valid score for {', '.join(bad)}")
    return (sums[0] / sums[1]).tolist()


@torch.no_grad()
def greedy_rewards(trainer, rows: Sequence[dict], weights_K: Sequence[float]) -> torch.Tensor:
    """``[P]`` (all processes): the mixed reward of one greedy completion of each prompt group of ``rows`` (this
    process's rollout inputs, ``num_generations`` rows per prompt); NaN where no reward could score it."""
    t0 = time.perf_counter()
    firsts = list(rows)[::trainer.num_generations]
    prompts = [r["prompt"] for r in firsts]
    texts, ids = _greedy(trainer, prompts, trainer.max_completion_length)
    columns = {c: [r.get(c) for r in firsts] for c in (firsts[0] if firsts else {}) if c != "prompt"}
    mixed = mix_rewards(_score(trainer, prompts, texts, ids, columns).to(torch.float32), weights_K)
    trainer._metrics["train"]["remax/greedy_seconds"].append(time.perf_counter() - t0)
    return trainer.accelerator.gather(mixed.to(trainer.accelerator.device))


# ------------------------------------------------------------------------------------------------ token-side inputs
def gathered_token_batch(trainer, batch):
    """``scope: global``: every rank sees all ranks' rows (values only; weights carry no gradient)."""

    def all_rows(t):
        if t is None:
            return None
        t = t.detach()
        if t.dim() == 1:
            return trainer.accelerator.gather(t)
        return trainer.accelerator.gather(trainer.accelerator.pad_across_processes(t, dim=1, pad_index=0))

    return batch.replace(**{k: all_rows(getattr(batch, k)) for k in
                            ("advantages", "mask", "logps", "old_logps", "entropies", "old_entropies")})


def group_ordered(inputs: dict, group_size: int) -> dict:
    """Whole prompt groups in contiguous rows (TRL shuffles the generation batch): reorder every per-row tensor of
    the micro-batch by group id. Every aggregation is invariant to the row order."""
    group_ids = inputs["group_ids"]
    counts = torch.bincount(group_ids - group_ids.min())
    if bool((counts[counts > 0] != group_size).any()):
        raise UserError("a token strategy that needs whole groups (tw_grpo) needs them in each micro-batch: set "
                        "train.steps_per_generation to 1 and per_device_train_batch_size to a multiple of "
                        "num_generations")
    order = torch.argsort(group_ids, stable=True)
    b = group_ids.size(0)
    return {k: (v[order] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.size(0) == b else v)
            for k, v in inputs.items()}


@torch.no_grad()
def last_hidden_and_head(trainer, model, input_ids, attention_mask, logits_to_keep):
    """Final hidden states of the completion positions and the LM head weight (for chunked full-vocab strategies)."""
    unwrapped = trainer.accelerator.unwrap_model(model)
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state[:, -logits_to_keep - 1:-1, :]
    return hidden, base.get_output_embeddings().weight


@torch.no_grad()
def no_grad_entropies(trainer, batch) -> torch.Tensor:
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    _, entropies, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, input_ids, attention_mask, batch["completion_ids"].size(1), compute_entropy=True,
        batch_size=trainer.args.per_device_train_batch_size)
    return entropies


def global_mean(trainer, x: torch.Tensor, mask: torch.Tensor) -> float:
    totals = trainer.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
    return float(totals[0] / totals[1].clamp(min=1.0))


# ------------------------------------------------------------------------------------ rewards that read the policy
def needs_policy_stats(reward_funcs) -> bool:
    """Some reward function declares ``needs_policy_stats`` (EM-RL's ``neg_entropy``)."""
    return any(getattr(fn, "needs_policy_stats", False) for fn in reward_funcs)


@torch.no_grad()
def with_policy_stats(trainer, inputs: Sequence[dict], prompt_ids: Sequence[Sequence[int]],
                      completion_ids: Sequence[Sequence[int]]) -> List[dict]:
    """Copies of the rollout ``inputs`` with ``policy_logps`` / ``policy_entropies``: per completion, the per-token
    log-probs and entropies (1-D CPU tensors, one value per completion token) under the rollout policy at the
    sampling temperature, from one no-grad chunked forward (``_get_per_token_logps_and_entropies``). TRL 1.16 passes
    every input column to the reward functions, so these reach them as keyword arguments. (TRL computes old
    log-probs before the rewards only when rollout and update are misaligned, as a local of
    ``_generate_and_score_completions``, and never old entropies: this forward is needed either way.)"""
    from trl.trainer.utils import pad

    device = trainer.accelerator.device
    pad_id = trainer.processing_class.pad_token_id if hasattr(trainer.processing_class, "pad_token_id") else 0
    p = pad([torch.tensor(list(x)) for x in prompt_ids], padding_value=pad_id or 0, padding_side="left").to(device)
    pm = pad([torch.ones(len(x), dtype=torch.long) for x in prompt_ids], padding_value=0,
             padding_side="left").to(device)
    c = pad([torch.tensor(list(x)) for x in completion_ids], padding_value=pad_id or 0,
            padding_side="right").to(device)
    cm = pad([torch.ones(len(x), dtype=torch.long) for x in completion_ids], padding_value=0,
             padding_side="right").to(device)
    t0 = time.perf_counter()
    logps, ents, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, torch.cat([p, c], dim=1), torch.cat([pm, cm], dim=1), c.size(1), compute_entropy=True,
        batch_size=trainer.args.per_device_train_batch_size)
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode]["em_rl/policy_stats_seconds"].append(time.perf_counter() - t0)
    lengths = [len(x) for x in completion_ids]
    return [dict(x, policy_logps=logps[i, :n].cpu(), policy_entropies=ents[i, :n].cpu())
            for i, (x, n) in enumerate(zip(inputs, lengths))]
