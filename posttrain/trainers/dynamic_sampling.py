"""DAPO dynamic sampling for the GRPO trainer (glue; the keep rule is :func:`posttrain.weighting.dynamic_sampling.informative_groups`).

A training generation batch is generated as TRL does; groups whose metric values are all equal (zero advantage
under group normalisation) are set aside, and further rounds of fresh prompts (drawn from the training set with a
seeded generator, checkpointed) are generated until every process holds as many informative groups as the batch
has, or ``max_rounds`` rounds were generated (DAPO, Yu et al. 2025, arXiv 2503.14476, Algorithm 1; verl's
``max_num_gen_batches``). Surplus informative groups are discarded, as in verl. When the cap is reached the batch is
completed with set-aside groups, which carry advantage 0 (the same gradient as training on the informative part
alone, with the token normaliser of a full batch), and a warning gives the kept fraction. The advantages of the
assembled batch are computed afresh by the configured estimator, after the objective strategies' mix.
Works with HF generate and vLLM (each round is TRL's own generation); the loop's exit test is taken over all
processes, so every process generates the same number of rounds.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List

import torch

from posttrain.errors import UserError
from posttrain.weighting.dynamic_sampling import informative_groups
from posttrain.weighting.protocol import mix_rewards

logger = logging.getLogger("posttrain.trainers")

_LEFT_PADDED = ("prompt_ids", "prompt_mask")
_ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "old_per_token_logps",
             "ref_per_token_logps", "sampling_per_token_logps", "importance_sampling_ratio", "tool_mask")


class DynamicSamplingMixin:
    """``rollout.dynamic_sampling`` in :class:`~posttrain.trainers.PosttrainGRPOTrainer`."""

    def _setup_dynamic_sampling(self, config) -> None:
        self._dynamic_sampling = None if config is None else (config if isinstance(config, dict) else
                                                              config.model_dump())
        self._sampling_generator = torch.Generator().manual_seed(int(self.args.seed) * 1_000_003 +
                                                                 self.accelerator.process_index)
        self._capped_steps = 0
        ds = self._dynamic_sampling
        if ds is None:
            return
        where = "rollout.dynamic_sampling"
        local = self.args.per_device_train_batch_size * self.args.steps_per_generation
        if local % self.num_generations:
            raise UserError(f"{where} keeps or drops whole prompt groups per process: per_device_train_batch_size x "
                            f"steps_per_generation ({local}) must be a multiple of num_generations "
                            f"({self.num_generations})")
        metric = ds.get("metric", "reward")
        if metric != "reward" and metric not in self.reward_func_names:
            raise UserError(f"{where}.metric: '{metric}' is neither 'reward' nor a reward name "
                            f"({', '.join(self.reward_func_names)})")
        if self._is_vlm or self.environment_factories is not None or self.tools:
            raise UserError(f"{where}: not available with images, tools or environments")

    # ------------------------------------------------------------------ rounds
    def _metric_values(self, rewards_NK: torch.Tensor) -> torch.Tensor:
        metric = self._dynamic_sampling.get("metric", "reward")
        if metric == "reward":  # the scalar reward with the mix in use at the start of the step (TRL's mix)
            return mix_rewards(rewards_NK, self.reward_weights.tolist())
        return rewards_NK[:, self.reward_func_names.index(metric)]

    def _refill_prompts(self, n_prompts: int) -> List[Dict[str, Any]]:
        domains = getattr(self, "_domain_sampler", None)
        if domains is not None:  # a data mixture: refill prompts by the current domain weights
            idx = domains.draw_rows(n_prompts, self._sampling_generator)
        else:
            idx = torch.randint(len(self.train_dataset), (n_prompts,), generator=self._sampling_generator)
        rows = [dict(self.train_dataset[int(i)]) for i in idx]
        return [row for row in rows for _ in range(self.num_generations)]

    def _sample_until_full(self, inputs: list):
        """Returns ``(out, rewards_NK, local_texts, input_rows)`` of the assembled batch (advantages zeros)."""
        ds, g = self._dynamic_sampling, self.num_generations
        n_local = len(inputs)
        target = n_local // g
        rank = self.accelerator.process_index
        kept, spare = [], []
        n_kept, zero_groups, rounds, batch = 0, 0, 0, inputs
        while True:
            rounds += 1
            out = self._trl_rollout(batch)
            rewards_NK = self._last_rewards_NK
            rows = slice(rank * len(batch), (rank + 1) * len(batch))
            keep = informative_groups(self._metric_values(rewards_NK)[rows].cpu(), g, rule=ds.get("rule", "std"),
                                      bounds=ds.get("bounds"))
            keep_rows = keep.repeat_interleave(g).to(out["completion_ids"].device)
            part = (out, rewards_NK[rows], self._local_texts, list(batch))
            kept.append(_select(part, keep_rows))
            spare.append(_select(part, ~keep_rows))
            n_kept += int(keep.sum())
            zero_groups += int((~keep).sum())
            fewest = int(self.accelerator.gather(torch.tensor([n_kept], device=self.accelerator.device)).min())
            if fewest >= target or rounds >= int(ds.get("max_rounds", 3)):
                break
            batch = self._refill_prompts(target)
        out, rewards_local, texts, rows_in = _concat(kept + spare, n_local, pad_id=self.processing_class.pad_token_id)
        mask = out["completion_mask"] if "tool_mask" not in out else out["completion_mask"] * out["tool_mask"]
        out["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        out["advantages"] = torch.zeros(n_local, device=out["completion_ids"].device)
        totals = self.accelerator.reduce(torch.tensor([min(n_kept, target), zero_groups], dtype=torch.float64,
                                                      device=self.accelerator.device), reduction="sum")
        kept_fraction = float(totals[0]) / (target * self.accelerator.num_processes)
        m = self._metrics["train"]
        m["dynamic_sampling/rounds"].append(float(rounds))
        m["dynamic_sampling/kept_fraction"].append(kept_fraction)
        m["dynamic_sampling/zero_variance_groups"].append(float(totals[1]))
        if fewest < target:
            self._capped_steps += 1
            if self._capped_steps in (1, 10) or self._capped_steps % 100 == 0:
                logger.warning("dynamic sampling: %d round(s) (rollout.dynamic_sampling.max_rounds) left the batch "
                               "%.0f%% informative at step %d (capped %d step(s) so far); the rest of the batch has "
                               "advantage 0", rounds, 100 * kept_fraction, self.state.global_step + 1,
                               self._capped_steps)
        return out, self.accelerator.gather(rewards_local), texts, rows_in

    # ------------------------------------------------------------------ checkpoint state
    def posttrain_state(self):
        state = super().posttrain_state()
        state["sampling_generator"] = self._sampling_generator.get_state()
        state["dynamic_sampling_capped_steps"] = self._capped_steps
        return state

    def load_posttrain_state(self, state):
        super().load_posttrain_state(state)
        if "sampling_generator" in state:
            self._sampling_generator.set_state(state["sampling_generator"])
            self._capped_steps = int(state.get("dynamic_sampling_capped_steps", 0))


def _select(part, rows: torch.Tensor):
    out, rewards, texts, inputs = part
    picked = {k: out[k][rows] for k in _ROW_KEYS if isinstance(out.get(k), torch.Tensor)}
    idx = rows.nonzero().flatten().tolist()
    return picked, rewards[rows.to(rewards.device)], [texts[i] for i in idx], [inputs[i] for i in idx]


def _concat(parts, n_rows: int, *, pad_id: int):
    """The first ``n_rows`` rows of the parts, in order; per-token tensors padded to a common width (prompts on the
    left, completions on the right, as TRL pads them)."""
    out: Dict[str, torch.Tensor] = {}
    for key in parts[0][0]:
        tensors = [p[0][key] for p in parts if p[0][key].size(0) > 0]
        if tensors[0].dim() == 2:
            width = max(t.size(1) for t in tensors)
            value = pad_id if key in ("prompt_ids", "completion_ids") else (1.0 if key == "importance_sampling_ratio"
                                                                            else 0)
            padded = []
            for t in tensors:
                extra = width - t.size(1)
                if extra:
                    fill = torch.full((t.size(0), extra), value, dtype=t.dtype, device=t.device)
                    t = torch.cat([fill, t] if key in _LEFT_PADDED else [t, fill], dim=1)
                padded.append(t)
            tensors = padded
        out[key] = torch.cat(tensors, dim=0)[:n_rows]
    rewards = torch.cat([p[1] for p in parts], dim=0)[:n_rows]
    texts = [t for p in parts for t in p[2]][:n_rows]
    rows_in = [r for p in parts for r in p[3]][:n_rows]
    return out, rewards, texts, rows_in
