"""Objective and sequence reweighting glue for :class:`~posttrain.trainers.PosttrainGRPOTrainer` (no formulas).

Where each strategy enters TRL 1.16's GRPO step (design.md, "Where weights enter a GRPO step"):

1. **Objective weights** ``lambda_k(t)`` (``weighting.objectives``). TRL forms the scalar reward
   ``r = sum_k reward_weights[k] * r_k`` inside ``_generate_and_score_completions``, *after* calling
   ``_calculate_rewards`` and from the attribute ``self.reward_weights``. We set that attribute at the end of our
   ``_calculate_rewards`` override, once the (all-gathered) per-objective rewards of the step are known and the
   strategy has been updated where its paper updates it before the mix. This is the least invasive correct place:
   TRL's own advantage code, its ``multi_objective_aggregation`` options and its ``reward`` logging all use the
   same weights, and nothing of TRL's step is copied. Strategy weights are a simplex (a weighted *average* of the
   rewards); under group std-normalised advantages this equals TRL's unnormalised ``reward_weights`` up to TRL's
   ``1e-4`` in the denominator.

   Update timing (once per generation batch in training mode = once per optimizer step with the default
   ``steps_per_generation=1``; statistics are over the all-gathered batch, identical on every rank):

   * ``fixed``: never changes;
   * ``lagrangian``: the step's reward mix uses the current multipliers; then ``update(J)`` with ``J_k`` the
     batch mean of reward ``k`` (NaN samples left out) -- the official code steps the multipliers after the policy
     step, so the new weights act from the next step on;
   * ``recap`` / ``convergence_instability``: ``update(1 - J_k)`` *before* the mix (Alg. 2 order). The surrogate
     "loss" of objective k is its shortfall from 1 (every shipped reward is at most 1). This is our adaptation of
     RECAP to per-objective rewards, not RECAP's per-objective losses (see the class docstring);
   * ``trust``: ``update(step=global_step)``; the scalar reward is Trust-GRPO's per-group ``a + d_g t``
     (``TrustWeighting.combine``), which no weight vector expresses, so advantages are recomputed (below);
     ``reward_weights`` holds ``weights()``, the effective mix of a trusted group, for TRL's logging;
   * ``hypervolume``: the fixed base weights. The initial model is evaluated at the first step (the reference
     point); after every ``eval_every``-th optimizer step the policy is evaluated greedily on ``eval_prompts``
     held-out prompts (``data.eval``), each reward scoring every completion (sharded over processes, sums
     all-reduced), and ``update(p_t)`` gives the meta-reward ``m`` used from the next step. With the default
     ``apply_to="advantage"`` ``m`` multiplies the advantages *after* group normalisation, where it acts: a
     batch-uniform factor on the reward cancels under GRPO's std normalisation (methods.md C8 caveat).
     ``apply_to="reward"`` (the official placement) multiplies ``reward_weights`` by ``m``: faithful but, with
     ``scale_rewards`` ``group`` or ``batch``, a no-op up to ``1e-4``.

2. **Sequence strategies** (``weighting.sequences``), training mode only:

   * ``dra`` (DRA-GRPO): completions are embedded with all-MiniLM-L6-v2 (offline), the diversity factor
     ``w_i = 1/sum_j S_ij`` is computed per prompt group (``scope: group``) or over each process's completions
     (``scope: process``, the official code), and multiplies the scalar reward *before* the group advantages;
   * ``seed`` (SEED-GRPO): completions are clustered by their final answer (``answer: last`` reads the last
     number, as for arithmetic), the per-prompt semantic entropy (frequency estimate) gives a scale
     ``f(alpha SE / log G)`` that multiplies the prompt's advantages;
   * ``loss_reweighting`` (Sow et al.): the per-sample loss is the token-mean negative log-likelihood of the
     completion under the rollout policy (TRL's ``old_per_token_logps`` when it computed them, else one no-grad
     forward); weights over the all-gathered batch (the official scope), scaled by N to mean 1, multiply the
     advantages (burn-in: uniform for the first ``burn_in_steps`` optimizer steps).

   When ``dra`` or ``trust`` reshape the scalar reward, the advantages are recomputed with
   :func:`posttrain.losses.group_advantages` (TRL's ``sum_then_normalize`` formula, checked against TRL in the
   tests); otherwise TRL's advantages are kept and only multiplied.

State: every strategy's ``state_dict`` and the current ``reward_weights`` go into ``posttrain_state`` (saved in each
checkpoint, restored on resume).
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, List, Optional

import torch
from accelerate.utils import gather, gather_object
from transformers import TrainerCallback

from posttrain.errors import UserError
from posttrain.losses.advantages import group_advantages
from posttrain.registry import RegistryError
from posttrain.rewards.base import completion_text
from posttrain.weighting.objectives import (
    ConvergenceInstabilityWeights,
    FixedWeights,
    GradientWeights,
    HypervolumeWeights,
    LagrangianWeights,
    TrustWeighting,
)
from posttrain.weighting.specs import build_objective_strategy, build_sequence_strategies

logger = logging.getLogger("posttrain.trainers")


class _ObjectiveEvalCallback(TrainerCallback):
    """After each optimizer step: the hypervolume strategy's held-out evaluation when it is due."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._objective_step_end(state.global_step)


class RewardWeightingMixin:
    """Objective + sequence reweighting hooks; mixed into the GRPO trainer before ``CheckpointStateMixin`` (its
    ``posttrain_state`` / ``load_posttrain_state`` call ``super()``)."""

    # ------------------------------------------------------------------ set-up
    def _setup_reward_weighting(self, weighting, eval_dataset=None) -> None:
        self._objective = None
        self._objective_opts: Dict[str, Any] = {}
        self._sequences: Dict[str, tuple] = {}
        self._objective_eval_dataset = eval_dataset
        self._last_texts: Optional[List[str]] = None
        self._last_rewards: Optional[torch.Tensor] = None
        if weighting is None:
            return
        names = list(self.reward_func_names)
        if weighting.objectives is not None:
            try:
                self._objective, self._objective_opts = build_objective_strategy(
                    weighting.objectives.model_dump(), names, self.reward_weights.tolist())
            except (RegistryError, TypeError, ValueError) as exc:
                raise UserError(f"weighting.objectives: {exc}") from None
            self.reward_weights = torch.tensor(self._objective.weights(), dtype=torch.float32)
        for i, spec in enumerate(weighting.sequences):
            try:
                (name, obj, kwargs, opts), = build_sequence_strategies([spec.model_dump()])
            except (RegistryError, TypeError, ValueError) as exc:
                raise UserError(f"weighting.sequences.{i}: {exc}") from None
            if name in self._sequences:
                raise UserError(f"weighting.sequences: {name} is listed twice")
            self._sequences[name] = (obj, kwargs, opts)
        if isinstance(self._objective, GradientWeights):
            self._setup_gradient_objective()
        if self._recomputes_rewards() and self.multi_objective_aggregation != "sum_then_normalize":
            raise UserError("weighting: dra / trust / gradient reshape the summed reward and need "
                            "train.multi_objective_aggregation=sum_then_normalize")
        if isinstance(self._objective, HypervolumeWeights):
            if eval_dataset is None or len(eval_dataset) == 0:
                raise UserError("weighting.objectives: hypervolume needs held-out prompts: set data.eval")
            self.add_callback(_ObjectiveEvalCallback(self))

    def _recomputes_rewards(self) -> bool:
        return "dra" in self._sequences or isinstance(self._objective, (TrustWeighting, GradientWeights))

    # ------------------------------------------------------------------ objective weights (before TRL's mix)
    def _objective_names(self) -> List[str]:
        names = self._objective.names if self._objective is not None else None
        return list(names or self.reward_func_names)

    @staticmethod
    def _objective_means(rewards_per_func: torch.Tensor) -> Optional[List[float]]:
        """Per-objective batch means (NaN samples left out); None when some objective has no valid sample."""
        means = torch.nanmean(rewards_per_func.double(), dim=0).tolist()
        return None if any(not math.isfinite(m) for m in means) else means

    def _reweight_before_mix(self, rewards_per_func: torch.Tensor, completions, mode: str) -> None:
        """Called at the end of ``_calculate_rewards`` with the gathered ``[N, K]`` rewards (failed rows NaN)."""
        self._last_texts = [completion_text(c) for c in completions]
        self._last_rewards = rewards_per_func
        strat = self._objective
        if strat is None or mode != "train":
            return
        metrics = self._metrics[mode]
        means = self._objective_means(rewards_per_func)
        if means is None:
            logger.warning("objective weighting: an objective has no valid reward this step; weights not updated")
        if isinstance(strat, ConvergenceInstabilityWeights) and means is not None:
            strat.update([1.0 - m for m in means])  # Alg. 2: update before the weighted combination
        elif isinstance(strat, TrustWeighting):
            strat.update(step=int(self.state.global_step))
        elif isinstance(strat, HypervolumeWeights) and strat.reference() is None:
            ref = self._evaluate_objectives()
            strat.set_reference(ref)
            for name, v in zip(self._objective_names(), ref):
                metrics[f"objective_eval_reference/{name}"].append(v)
        if isinstance(strat, GradientWeights):
            return  # updated and logged in _reweight_advantages, where the completions' token ids are at hand
        weights = strat.weights()
        factor = 1.0
        if isinstance(strat, HypervolumeWeights):
            metrics["objective_weighting/meta_reward"].append(strat.meta_reward())
            if strat.apply_to == "reward":
                factor = strat.meta_reward()
        self.reward_weights = torch.tensor([w * factor for w in weights], dtype=torch.float32)
        for name, w in zip(self._objective_names(), weights):
            metrics[f"reward_weights/{name}"].append(float(w))
        if isinstance(strat, LagrangianWeights):
            for k, lam in zip(strat.constrained, strat.multipliers()):
                metrics[f"objective_weighting/lambda/{self._objective_names()[k]}"].append(lam)
            if means is not None:
                strat.update(means)  # official order: multipliers step after the policy step -> next step's mix
        elif isinstance(strat, FixedWeights):
            strat.update()

    # ------------------------------------------------------------------ hypervolume evaluation
    def _objective_step_end(self, global_step: int) -> None:
        strat = self._objective
        if not isinstance(strat, HypervolumeWeights) or not strat.should_evaluate(global_step):
            return
        if strat.reference() is None:  # cannot happen after the first step; defensive
            return
        perf = self._evaluate_objectives()
        m = strat.update(perf)
        metrics = self._metrics["train"]
        for name, v in zip(self._objective_names(), perf):
            metrics[f"objective_eval/{name}"].append(v)
        metrics["objective_weighting/hvc"].append(float(strat.last_hvc or 0.0))
        metrics["objective_weighting/front_hypervolume"].append(strat.front_hypervolume())
        logger.info("objective eval at step %d: %s -> meta-reward %.3f", global_step, perf, m)

    @torch.no_grad()
    def _evaluate_objectives(self) -> List[float]:
        """Greedy completions of the first ``eval_prompts`` held-out prompts, mean score per reward function.
        Prompts are sharded over processes; sums and counts are all-reduced, so every rank gets the same vector."""
        from posttrain.distributed import full_policy
        from posttrain.evaluation import generate_greedy

        ds = self._objective_eval_dataset
        n = min(int(self._objective_opts.get("eval_prompts", 32)), len(ds))
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        part = ds.select(range(n)).select(range(rank, n, world))
        prompts = list(part["prompt"])
        k = len(self.reward_funcs)
        sums = torch.zeros(2, k, dtype=torch.float64, device=self.accelerator.device)
        # every rank enters full_policy (under ZeRO-3 it all-gathers the weights and lifts DeepSpeed's hooks), then
        # generates its own share alone: shares may differ by one prompt and greedy lengths differ, so no rank may
        # wait for another inside generate
        with full_policy(self) as model:
            if prompts:
                max_new = self._objective_opts.get("eval_max_new_tokens") or self.max_completion_length
                texts, ids = generate_greedy(model, self.processing_class, prompts, max_new_tokens=int(max_new),
                                             batch_size=32, desc="objective eval")
        if prompts:
            conversational = isinstance(prompts[0], list)
            completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
            columns = {c: list(part[c]) for c in part.column_names if c != "prompt"}
            for j, fn in enumerate(self.reward_funcs):
                scores = fn(prompts=prompts, completions=completions, completion_ids=ids, trainer_state=self.state,
                            log_extra=lambda *a, **kw: None, log_metric=lambda *a, **kw: None, **columns)
                vals = [float(s) for s in scores if s is not None and math.isfinite(float(s))]
                sums[0, j], sums[1, j] = math.fsum(vals), len(vals)
        sums = self.accelerator.reduce(sums, reduction="sum")
        if bool((sums[1] == 0).any()):
            bad = [self._objective_names()[j] for j in range(k) if sums[1, j] == 0]
            raise UserError(f"weighting.objectives: hypervolume evaluation: no valid score for {', '.join(bad)} "
                            f"on the held-out prompts")
        return (sums[0] / sums[1]).tolist()

    # ------------------------------------------------------------------ gradient objective weights (DRW (b))
    def _setup_gradient_objective(self) -> None:
        """Pick the parameters whose per-objective gradients feed the Gram matrix (``parameters``: a regular
        expression searched in each trainable parameter's name; default every trainable parameter, i.e. the LoRA
        adapters when LoRA is on)."""
        from posttrain.distributed import is_zero3

        if is_zero3(self):
            raise UserError("weighting.objectives: the gradient strategy needs whole parameters on every process; "
                            "it does not run under ZeRO-3 (use ZeRO-2 or no DeepSpeed)")
        pattern = self._objective_opts.get("parameters")
        model = self.accelerator.unwrap_model(self.model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if pattern is not None:
            named = [(n, p) for n, p in named if re.search(pattern, n)]
        if not named:
            raise UserError(f"weighting.objectives: gradient: no trainable parameter matches parameters={pattern!r}")
        self._gradient_params = [p for _, p in named]
        logger.info("gradient objective weighting over %d parameter tensors (%d values)", len(named),
                    sum(p.numel() for p in self._gradient_params))

    def _objective_gradients(self, out: dict, local: slice) -> torch.Tensor:
        """``[K, P]``: per objective k, the policy gradient of the loss built from reward k alone.

        Advantages ``A_k`` are reward k's group advantages (TRL's formula, ``scale_rewards`` as configured) over the
        gathered batch; the loss is ``-sum_{i,t} A_k,i log pi(y_i,t) / T`` with ``T`` the completion tokens of the
        whole batch (all processes), whose gradient at the rollout policy is the on-policy GRPO/DAPO policy
        gradient (importance ratio 1, clipping inactive). One forward, ``K`` backward passes
        (``retain_graph``), restricted to the selected parameters; the ``[K, P]`` result is summed over
        processes, so every rank holds the same gradients of the global loss."""
        rpf = self._last_rewards
        g = self.num_generations
        mask = out["completion_mask"].float()
        total_tokens = self.accelerator.reduce(mask.sum().detach(), reduction="sum").clamp(min=1.0)
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        model = self.accelerator.unwrap_model(self.model)  # no DDP / engine hooks: these backward passes are ours
        rows = []
        with torch.enable_grad():
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention, out["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size)
            seq_logp = (logps * mask).sum(dim=1)
            for k in range(rpf.size(1)):
                adv = group_advantages(rpf[:, k].float(), g, scale=self.scale_rewards)[local]
                loss = -(adv.to(seq_logp.device, seq_logp.dtype) * seq_logp).sum() / total_tokens
                grads = torch.autograd.grad(loss, self._gradient_params, retain_graph=k + 1 < rpf.size(1),
                                            allow_unused=True)
                rows.append(torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1).float()
                                       for gr, p in zip(grads, self._gradient_params)]))
        return self.accelerator.reduce(torch.stack(rows), reduction="sum")

    def _update_gradient_objective(self, out: dict, local: slice, metrics) -> None:
        """DRW (b): exponentiated-gradient step on the Gram alignment scores with the actor's current learning
        rate; the new weights form this step's reward (the official order)."""
        strat = self._objective
        grads = self._objective_gradients(out, local)
        if not bool(torch.isfinite(grads).all()):
            logger.warning("gradient objective weighting: non-finite per-objective gradient; weights not updated")
            return
        lr = float(self.lr_scheduler.get_last_lr()[0]) if self.lr_scheduler is not None else self.args.learning_rate
        weights = strat.update(grads.cpu().double(), lr)
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)
        names = self._objective_names()
        for name, w in zip(names, weights):
            metrics[f"reward_weights/{name}"].append(float(w))
        for name, v in zip(names, strat.last_scores or []):
            metrics[f"objective_weighting/gradient_score/{name}"].append(float(v))
        for name, v in zip(names, grads.norm(dim=1).tolist()):
            metrics[f"objective_weighting/gradient_norm/{name}"].append(float(v))

    # ------------------------------------------------------------------ sequence strategies (advantages)
    def _reweight_advantages(self, out: dict, mode: str) -> dict:
        """Called after TRL's ``_generate_and_score_completions``; returns ``out`` with adjusted advantages."""
        hv_adv = isinstance(self._objective, HypervolumeWeights) and self._objective.apply_to == "advantage"
        if mode != "train" or not (self._sequences or self._recomputes_rewards() or hv_adv):
            return out
        metrics = self._metrics[mode]
        n_local = out["completion_ids"].size(0)
        rank = self.accelerator.process_index
        local = slice(rank * n_local, (rank + 1) * n_local)
        g = self.num_generations
        adv = out["advantages"]
        if self._recomputes_rewards():
            rpf = self._last_rewards
            unscorable = torch.isnan(rpf).all(dim=1)
            group_ids = torch.arange(rpf.size(0), device=rpf.device) // g
            if isinstance(self._objective, GradientWeights):
                self._update_gradient_objective(out, local, metrics)
            if isinstance(self._objective, TrustWeighting):
                # outcome = first reward, auxiliary = second; a missing auxiliary score counts as 0
                outcome, aux = torch.nan_to_num(rpf[:, 0], nan=0.0), torch.nan_to_num(rpf[:, 1], nan=0.0)
                rewards = self._objective.combine(outcome, aux, group_ids.cpu()).to(rpf.device, torch.float32)
                rewards[torch.isnan(rpf[:, 0])] = torch.nan
                stats = self._objective.last_stats
                metrics["objective_weighting/trust/mean_discount"].append(
                    sum(s["discount"] for s in stats) / max(len(stats), 1))
            else:
                rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
            rewards[unscorable] = torch.nan
            if "dra" in self._sequences:
                w = self._dra_factors(n_local).to(rewards.device, rewards.dtype)
                rewards = rewards * w
                metrics["sequence_weighting/dra/mean"].append(float(w.mean()))
                metrics["sequence_weighting/dra/min"].append(float(w.min()))
            adv = group_advantages(rewards, g, scale=self.scale_rewards)[local].to(adv.device, adv.dtype)
        if "seed" in self._sequences:
            scale = self._seed_scales()[local].to(adv.device, adv.dtype)
            adv = adv * scale
            metrics["sequence_weighting/seed/scale_mean"].append(float(self._last_seed_scale.mean()))
        if "loss_reweighting" in self._sequences:
            w = self._loss_sample_factors(out, local).to(adv.device, adv.dtype)
            adv = adv * w
            metrics["sequence_weighting/loss_reweighting/max"].append(float(w.max()))
        if hv_adv:
            adv = adv * self._objective.meta_reward()
        out["advantages"] = adv
        return out

    def _dra_factors(self, n_local: int) -> torch.Tensor:
        """DRA diversity factor of every row of the gathered batch (MiniLM embeddings, embedded per process)."""
        from posttrain.rewards.similarity import encode_texts
        from posttrain.weighting.sequences import dra_weights

        _, kwargs, opts = self._sequences["dra"]
        emb = torch.from_numpy(encode_texts(self._last_texts)).to(self.accelerator.device)
        emb = gather(emb)
        n = emb.size(0)
        per = self.num_generations if opts["scope"] == "group" else n_local
        group_ids = torch.arange(n, device=emb.device) // per
        return dra_weights(emb, group_ids, **kwargs)

    def _answers(self, texts: List[str], how: str) -> list:
        from posttrain.rewards.math import find_answer_number

        if how == "text":
            return [t.strip() or None for t in texts]
        return [find_answer_number(t, how) for t in texts]

    def _seed_scales(self) -> torch.Tensor:
        """SEED-GRPO scale of every row of the gathered batch (one value per prompt group, repeated)."""
        _, kwargs, opts = self._sequences["seed"]
        from posttrain.weighting.sequences import seed_grpo_prompt_scales

        texts = gather_object(self._last_texts)
        answers = self._answers(texts, opts["answer"])
        g = self.num_generations
        groups = [answers[i:i + g] for i in range(0, len(answers), g)]
        scale = seed_grpo_prompt_scales(groups, **kwargs)
        self._last_seed_scale = scale
        return scale.repeat_interleave(g)

    @torch.no_grad()
    def _loss_sample_factors(self, out: dict, local: slice) -> torch.Tensor:
        """Sow et al. sample weights over the gathered batch, times N (mean 1), for this process's rows."""
        weighter = self._sequences["loss_reweighting"][0]
        mask = out["completion_mask"].float()
        logps = out.get("old_per_token_logps")
        if logps is None:
            input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
            attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention, out["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size)
        nll = -(logps * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        losses = gather(nll.float())
        weighter.num_steps = int(self.state.global_step)  # burn-in counts completed optimizer steps
        w = weighter.weights(losses) * losses.numel()
        return w[local]

    # ------------------------------------------------------------------ checkpoint state
    def posttrain_state(self):
        state = super().posttrain_state()
        lw = self._sequences.get("loss_reweighting")
        state["reward_weighting"] = {
            "objective": None if self._objective is None else self._objective.state_dict(),
            "reward_weights": self.reward_weights.tolist(),
            "loss_reweighting": None if lw is None else lw[0].state_dict(),
        }
        return state

    def load_posttrain_state(self, state):
        super().load_posttrain_state(state)
        saved = state.get("reward_weighting")
        if saved is None:
            return
        if (saved["objective"] is None) != (self._objective is None):
            raise UserError("--resume: the checkpoint was written with a different weighting.objectives setting")
        if self._objective is not None:
            try:
                self._objective.load_state_dict(saved["objective"])
            except ValueError as exc:
                raise UserError(f"--resume: weighting.objectives: {exc}") from None
        self.reward_weights = torch.tensor(saved["reward_weights"], dtype=torch.float32)
        lw = self._sequences.get("loss_reweighting")
        if lw is not None and saved.get("loss_reweighting") is not None:
            lw[0].load_state_dict(saved["loss_reweighting"])
