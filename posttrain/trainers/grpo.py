"""Our GRPO trainer: a subclass of TRL's ``GRPOTrainer`` that calls the strategy protocol's hooks.  Glue only.

The hook points and what each sees are in :mod:`posttrain.weighting.protocol` (its docstring draws the step).
Here: the rewards of a generation batch (all processes, failed samples NaN) build a
:class:`~posttrain.weighting.protocol.RolloutContext`; objective strategies set the mix TRL forms
(``mix_weights``, at the end of ``_calculate_rewards``); after TRL's ``_generate_and_score_completions`` the
``reshape_rewards`` hooks may change the scalar reward, the advantage estimator runs unless TRL's own advantages are
the estimator's (``trl_native``) and nothing was reshaped, and the ``adjust_advantages`` hooks follow. Token
strategies run in :meth:`_compute_loss` and reach the loss through :func:`posttrain.losses.policy_loss`; with none,
the loss is TRL's own ``_compute_loss`` untouched. With no strategy at all this is exactly TRL's GRPO.
Trainer-only services (embeddings, per-objective gradients, held-out evaluation) are in
:mod:`posttrain.trainers.grpo_services`. A strategy that raises in a hook stops the run with a checkpoint.
Per-token log-probs and entropies come from our chunked LM-head path (:class:`ChunkedLogprobsMixin`; TRL's fused
head where it cannot apply). Reliability (docs/reliability.md): failed rewards are NaN rows (left out of the advantages); :class:`StepGuard`
skips non-finite steps; checkpoints carry every strategy's state (:class:`CheckpointStateMixin`).
"""
from __future__ import annotations

import logging
from functools import partial

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.data_utils import is_conversational

from posttrain.data import render_prompt
from posttrain.errors import RunStopped, StrategyFailed, UserError
from posttrain.rewards.base import completion_text
from posttrain.trainers import grpo_services as services
from posttrain.trainers.checkpointing import CheckpointStateMixin
from posttrain.trainers.domains import DomainMixtureMixin
from posttrain.trainers.dynamic_sampling import DynamicSamplingMixin
from posttrain.trainers.forward import ChunkedLogprobsMixin
from posttrain.trainers.guards import GuardedTrainerMixin, RewardFailureMixin, raise_if_failed_anywhere, zero_loss
from posttrain.trainers.relift import ReliftMixin
from posttrain.trainers.token_loss import TokenLossMixin
from posttrain.weighting import protocol
from posttrain.weighting.protocol import RolloutContext, StepEndContext, StrategyEnv, with_hook

logger = logging.getLogger("posttrain.trainers")


class _StepEndHooks(TrainerCallback):
    """After each optimizer step: every strategy's ``on_step_end``."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._run_step_end_hooks(state.global_step)


class PosttrainGRPOTrainer(ChunkedLogprobsMixin, ReliftMixin, DynamicSamplingMixin, TokenLossMixin, RewardFailureMixin,
                           GuardedTrainerMixin, DomainMixtureMixin, CheckpointStateMixin, GRPOTrainer):
    """TRL's GRPO plus the strategy protocol's hooks.  With no strategy configured it is exactly TRL's GRPO.

    Extra keyword arguments: ``weighting`` (the recipe's ``weighting`` section: ``objectives``, ``sequences``,
    ``tokens``, ``scope``, ``normalize``), ``advantage`` (the estimator's spec, default ``{"name": "grpo"}``),
    ``dynamic_sampling`` (``{max_rounds, metric, rule, bounds}``: DAPO's refill of zero-variance groups),
    ``max_reward_failure_fraction`` (stop when more than this fraction of a step's samples has a failed reward),
    ``max_nonfinite_steps``, ``diagnostics_dir`` and ``objective_eval_dataset`` (held-out prompts for strategies
    that evaluate the objectives, e.g. ``hypervolume``), ``relift`` (the recipe's ``relift`` section: ReLIFT's
    fine-tuning on the hardest questions, :mod:`posttrain.trainers.relift`); ``domains`` -- a
    :class:`~posttrain.trainers.domains.DomainSetup` for a data mixture (prompts drawn by domain weights,
    :mod:`posttrain.trainers.domains`).
    """

    def __init__(self, *args, weighting=None, advantage=None, dynamic_sampling=None,
                 max_reward_failure_fraction: float = 0.5,
                 max_nonfinite_steps: int = 3, diagnostics_dir=None, objective_eval_dataset=None, relift=None,
                 domains=None,
                 **kwargs):
        if not 0.0 <= max_reward_failure_fraction <= 1.0:
            raise UserError(f"max_reward_failure_fraction must be in [0, 1], got {max_reward_failure_fraction}")
        self.max_reward_failure_fraction = max_reward_failure_fraction
        self.weighting = weighting
        self._setup_token_strategies(weighting)  # one line on a bad name / argument, before TRL's set-up
        super().__init__(*args, **kwargs)
        self._install_guard(max_nonfinite_steps, diagnostics_dir)
        self._objective_eval_dataset = objective_eval_dataset
        self._build_rollout_strategies(weighting, advantage)
        self._setup_dynamic_sampling(dynamic_sampling)
        self._setup_relift(relift)
        self._check_token_weighting_supported()
        self._setup_domains(domains)
        self._step_ctx = None
        self._local_texts, self._step_inputs = [], []
        self._policy_stat_rewards = services.needs_policy_stats(self.reward_funcs)
        self._rollout_prompt_ids = None

    # ------------------------------------------------------------------ set-up
    def _env(self) -> StrategyEnv:
        model = self.accelerator.unwrap_model(self.model)
        return StrategyEnv(
            reward_names=tuple(self.reward_func_names), reward_weights=tuple(self.reward_weights.tolist()),
            num_generations=self.num_generations, max_steps=self.args.max_steps if self.args.max_steps > 0 else None,
            has_eval_data=self._objective_eval_dataset is not None and len(self._objective_eval_dataset) > 0,
            scale_rewards=self.scale_rewards, world_size=self.accelerator.num_processes,
            trainable_parameters=tuple(n for n, p in model.named_parameters() if p.requires_grad),
            generation_batch_size=self.args.per_device_train_batch_size * self.args.steps_per_generation)

    def _build_rollout_strategies(self, weighting, advantage) -> None:
        env = self._env()
        try:
            objectives = [protocol.build_strategy("objective", weighting.objectives, env)] \
                if weighting is not None and weighting.objectives is not None else []
        except (KeyError, ValueError) as exc:
            raise UserError(f"weighting.objectives: {exc}") from None
        try:
            sequences = protocol.build_strategies("sequence", list(weighting.sequences) if weighting else [], env)
        except (KeyError, ValueError) as exc:
            raise UserError(f"weighting.sequences.{exc}") from None
        try:
            self._estimator = protocol.build_strategy("advantage", advantage or {"name": "grpo"}, env)
        except (KeyError, ValueError) as exc:
            raise UserError(f"advantage: {exc}") from None
        # the reward is shaped objective-first (the mix, then per-sequence factors); advantages are adjusted
        # sequence-first (per-sequence factors, then batch-level ones such as hypervolume's meta-reward)
        built = objectives + sequences
        self._rollout_strategies, self._adjust_order = built, sequences + objectives
        for line in protocol.strategy_warnings(built + [self._estimator]):
            logger.warning("%s", line)
        reshapes = bool(with_hook(built, "reshape_rewards")) or not self._estimator.trl_native
        if reshapes and self.multi_objective_aggregation != "sum_then_normalize":
            raise UserError("a strategy that reshapes the summed reward or a non-GRPO advantage estimator needs "
                            "train.multi_objective_aggregation=sum_then_normalize")
        if with_hook(built, "on_step_end"):
            self.add_callback(_StepEndHooks(self))
        self._gradient_params = {}

    @property
    def strategies(self) -> list:
        """Every configured strategy, in hook order (objective, sequences, estimator, tokens)."""
        return [*self._rollout_strategies, self._estimator, *self._token_strategies]

    # ------------------------------------------------------------------ prompts
    def _tokenize_prompts(self, prompts: list):
        """Keep assistant pre-fills.

        TRL 1.16 renders every conversational prompt with ``add_generation_prompt=True``; a conversation that ends
        with an assistant message (a pre-fill such as "3 + 4 = ") then gets that turn closed and a new one opened,
        and the model answers from scratch.  Such prompts are rendered here with ``continue_final_message=True``
        (the same function the evaluation uses); everything else goes through TRL unchanged.
        """
        prefilled = bool(prompts) and is_conversational({"prompt": prompts[0]}) and any(
            p[-1].get("role") == "assistant" for p in prompts
        )
        if not prefilled or self._is_vlm or self.environment_factories is not None or self.tools:
            return super()._tokenize_prompts(prompts)
        texts = [render_prompt(p, self.processing_class, **self.chat_template_kwargs) for p in prompts]
        prompt_ids = self.processing_class(text=texts, add_special_tokens=False)["input_ids"]
        return prompt_ids, None, {}

    # ------------------------------------------------------------------ rollout side
    def _generate(self, prompts):
        out = super()._generate(prompts)
        self._rollout_prompt_ids = out[0]  # the prompts' token ids, for rewards that read the policy (EM-RL)
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards with failed samples as NaN rows (:class:`RewardFailureMixin`), then the objective
        strategies' mix for TRL to form (training only; with dynamic sampling, once the batch is assembled).
        Rewards that declare ``needs_policy_stats`` (EM-RL's ``neg_entropy``) get the rollout policy's per-token
        ``policy_logps`` / ``policy_entropies`` (:func:`~posttrain.trainers.grpo_services.with_policy_stats`)."""
        if self._policy_stat_rewards:
            inputs = services.with_policy_stats(self, inputs, self._rollout_prompt_ids, completion_ids_list)
        rewards_NK = self._mark_failed_rewards(super()._calculate_rewards(inputs, prompts, completions,
                                                                          completion_ids_list), len(prompts))
        self._local_texts = [completion_text(c) for c in completions]
        self._last_rewards_NK = rewards_NK
        self._relift_observe(inputs, rewards_NK)  # ReLIFT: every generation round's all-fail prompts
        self._step_ctx = None
        hooks = self._rollout_strategies or not self._estimator.trl_native
        if self.model.training and hooks and self._dynamic_sampling is None:
            self._step_ctx = self._mix(rewards_NK)
        return rewards_NK

    def _mix(self, rewards_NK) -> RolloutContext:
        ctx = self._rollout_context(rewards_NK)
        for s in with_hook(self._rollout_strategies, "mix_weights"):
            weights = self._call(s, "mix_weights", ctx)
            if weights is not None:
                ctx.weights_K = tuple(float(w) for w in weights)
        self.reward_weights = torch.tensor(ctx.weights_K, dtype=torch.float32)
        return ctx

    def _rollout_context(self, rewards_NK) -> RolloutContext:
        lr = float(self.lr_scheduler.get_last_lr()[0]) if self.lr_scheduler is not None else self.args.learning_rate
        return RolloutContext(
            rewards_NK=rewards_NK, reward_names=tuple(self.reward_func_names),
            weights_K=tuple(self.reward_weights.tolist()), group_size=self.num_generations,
            texts=gather_object(self._local_texts), step=int(self.state.global_step),
            max_steps=self.args.max_steps if self.args.max_steps > 0 else None, learning_rate=lr,
            scale_rewards=self.scale_rewards, mode="train", process_index=self.accelerator.process_index,
            num_processes=self.accelerator.num_processes, all_gather=self.accelerator.gather,
            all_reduce_sum=partial(self.accelerator.reduce, reduction="sum"),
            embed_completions=partial(services.embed_completions, self, self._local_texts),
            evaluate_objectives=partial(services.evaluate_objectives, self, self._objective_eval_dataset),
            log=self._log_metric)

    def _trl_rollout(self, inputs):
        with self.guard.diverged_sampling(self.state):  # NaN/inf sampling probabilities: stop with diagnostics
            return super()._generate_and_score_completions(inputs)

    def _generate_and_score_completions(self, inputs):
        recompute = self._dynamic_sampling is not None and self.model.training
        if recompute:  # rounds until the batch is informative; then the mix and the advantages of the whole batch
            out, rewards_NK, self._local_texts, self._step_inputs = self._sample_until_full(inputs)
            self._step_ctx = self._mix(rewards_NK)
        else:
            self._step_inputs = inputs
            out = self._trl_rollout(inputs)
            rewards_NK = self._last_rewards_NK
        if self._step_ctx is not None:
            try:
                out["advantages"] = self._rollout_hooks(self._step_ctx, out, recompute=recompute)
            except StrategyFailed as exc:
                self.guard.request_stop(str(exc))  # this step is skipped, a checkpoint saved, the run stops
                out["advantages"] = torch.zeros_like(out["advantages"])
            self._step_ctx = None
        if self._domain is not None and self.model.training:
            self._domain_rollout(out, rewards_NK)
        return self._add_token_inputs(out)

    # ------------------------------------------------------------------ domains (DomainMixtureMixin)
    def _domain_sampler_layout(self):
        """TRL's RepeatSampler layout: one unit = the unique prompts of a generation batch, each repeated
        num_generations times, the unit repeated steps_per_generation x num_iterations times."""
        spg = self.args.steps_per_generation
        return (self.args.generation_batch_size // self.num_generations, self.num_generations,
                self.num_iterations * spg, self.args.per_device_train_batch_size * spg * self.accelerator.num_processes)

    def _domain_rollout(self, out: dict, rewards_NK) -> None:
        """Per-domain rewards of the batch; the strategy's loss factors on the advantages; the batch kept for
        ``domain_gradients``."""
        from posttrain.data.mixture import DOMAIN_COLUMN

        n = len(self._step_inputs)
        rank = self.accelerator.process_index
        ids = torch.tensor([int(row[DOMAIN_COLUMN]) for row in self._step_inputs])
        rewards = protocol.mix_rewards(rewards_NK, self.reward_weights.tolist())[rank * n:(rank + 1) * n]
        self._domain_observe(ids, rewards, key="reward", sign=-1.0)
        device = self.accelerator.device
        tokens = out["completion_mask"].sum(dim=1).float()
        self._domain_last = (out, self.accelerator.gather(out["advantages"].detach()),
                             self.accelerator.gather(ids.to(device)), self.accelerator.gather(tokens))
        factors = self._domain_factors_of(ids)
        if factors is not None:
            out["advantages"] = out["advantages"] * factors.to(out["advantages"])

    def _domain_gradients(self) -> torch.Tensor:
        """``[D, P]``: per domain, the surrogate gradient of its completions in the last generation batch, per
        token of that domain (zero for a domain absent from the batch)."""
        out, adv_N, ids_N, tokens_N = self._domain_last
        D = len(self._domain.names)
        onehot = torch.stack([(ids_N == d) for d in range(D)]).to(adv_N.dtype)                   # [D, N]
        tokens_D = (onehot * tokens_N.to(adv_N.dtype)).sum(dim=1)
        scale = torch.where(tokens_D > 0, tokens_N.sum() / tokens_D.clamp(min=1), torch.zeros_like(tokens_D))
        n = out["completion_mask"].size(0)
        local = slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)
        return services.policy_gradients(self, out, onehot * adv_N * scale[:, None], self._domain_params(), local)

    def _prompt_completion_batch(self, prompts: list, completions: list):
        """Prompt ids (rendered as the rollout renders them, :meth:`_tokenize_prompts`, left-padded) + completion
        ids + EOS (right-padded), as TRL lays out a rollout; returns ``(input_ids, attention_mask,
        completion_width)``. Used for ReLIFT's demonstrations and the domain strategies' held-out answers."""
        from trl.trainer.utils import pad

        tok = self.processing_class
        prompt_ids, _, _ = self._tokenize_prompts(list(prompts))
        completion_ids = tok(text=[str(c) for c in completions], add_special_tokens=False)["input_ids"]
        eos = tok.eos_token_id
        completion_ids = [list(c) + ([eos] if eos is not None and (not c or c[-1] != eos) else [])
                          for c in completion_ids]
        dev = self.accelerator.device
        p = [torch.tensor(x, dtype=torch.long, device=dev) for x in prompt_ids]
        c = [torch.tensor(x, dtype=torch.long, device=dev) for x in completion_ids]
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos
        p_ids, c_ids = pad(p, pad_id, "left"), pad(c, pad_id, "right")
        p_mask = pad([torch.ones_like(x) for x in p], 0, "left")
        c_mask = pad([torch.ones_like(x) for x in c], 0, "right")
        return torch.cat([p_ids, c_ids], dim=1), torch.cat([p_mask, c_mask], dim=1), c_ids.size(1)

    def _domain_heldout_batches(self, rows):
        """The held-out rows as one rollout-layout batch (:meth:`_prompt_completion_batch`) whose reference
        answer tokens (and EOS) are labelled."""
        if not rows:
            return []
        ds = self._domain.heldout
        key = "completion" if "completion" in ds.column_names else "answer"
        picked = [ds[int(i)] for i in rows]
        input_ids, attention_mask, width = self._prompt_completion_batch(
            [r["prompt"] for r in picked], [r[key] for r in picked])
        labels = torch.full_like(input_ids, -100)
        answer = attention_mask[:, -width:].bool()
        labels[:, -width:] = torch.where(answer, input_ids[:, -width:], labels[:, -width:])
        return [{"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}]

    def _rollout_hooks(self, ctx: RolloutContext, out: dict, *, recompute: bool = False) -> torch.Tensor:
        """reshape_rewards -> estimate -> adjust_advantages over the gathered batch; returns this process's rows."""
        local = ctx.local_rows
        ctx.completion_logps = partial(services.completion_logps, self, out)
        ctx.policy_gradients = partial(self._policy_gradients, out, local)
        ctx.greedy_rewards = lambda: services.greedy_rewards(self, self._step_inputs, ctx.weights_K)
        if "completion_mask" in out:
            ctx.completion_lengths_N = self.accelerator.gather(out["completion_mask"].sum(dim=1))
        ctx.rewards_N = ctx.mix()
        reshaped = False
        for s in with_hook(self._rollout_strategies, "reshape_rewards"):
            rewards = self._call(s, "reshape_rewards", ctx)
            if rewards is not None:
                ctx.rewards_N, reshaped = rewards, True
        self.reward_weights = torch.tensor(ctx.weights_K, dtype=torch.float32)
        recompute = recompute or reshaped or not self._estimator.trl_native
        if recompute:
            ctx.advantages_N = self._call(self._estimator, "estimate", ctx)
        else:
            ctx.advantages_N = self.accelerator.gather(out["advantages"])  # TRL's own, all processes
        for s in with_hook(self._adjust_order, "adjust_advantages"):
            adv = self._call(s, "adjust_advantages", ctx)
            if adv is not None:
                ctx.advantages_N = adv
        if not (recompute or with_hook(self._rollout_strategies, "adjust_advantages")):
            return out["advantages"]  # untouched: keep TRL's tensor itself
        return ctx.advantages_N[local].to(out["advantages"].device, out["advantages"].dtype)

    def _policy_gradients(self, out, local, advantages_KN, parameters=None):
        if parameters not in self._gradient_params:
            self._gradient_params[parameters] = services.select_parameters(self, parameters)
        return services.policy_gradients(self, out, advantages_KN, self._gradient_params[parameters], local)

    def _call(self, strategy, hook: str, ctx):
        """Run one hook; a failure is one line naming the strategy and the hook (the step then stops the run), raised
        on every process when it happens on any."""
        result, failure = None, None
        try:
            result = getattr(strategy, hook)(ctx)
        except (UserError, RunStopped):
            raise
        except StrategyFailed as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - any failure of a strategy is reported the same way
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            logger.exception("%s failed in %s", protocol.label(strategy), hook)
            failure = StrategyFailed(f"{protocol.label(strategy)} failed in {hook}: {type(exc).__name__}: {msg}")
            failure.__cause__ = exc
        raise_if_failed_anywhere(self.accelerator, failure)
        return result

    def _log_metric(self, key: str, value: float) -> None:
        self._metrics["train" if self.model.training else "eval"][key].append(float(value))

    def _run_step_end_hooks(self, global_step: int) -> None:
        ctx = StepEndContext(step=global_step, reward_names=tuple(self.reward_func_names), log=self._log_metric,
                             evaluate_objectives=partial(services.evaluate_objectives, self,
                                                         self._objective_eval_dataset))
        try:
            for s in with_hook(self._rollout_strategies, "on_step_end"):
                self._call(s, "on_step_end", ctx)
        except StrategyFailed as exc:
            self.guard.stop_reason = str(exc)

    # ------------------------------------------------------------------ checkpoint state
    def posttrain_state(self):
        state = super().posttrain_state()
        state.update(trl_step=int(self._step), trl_buffered_inputs=self._buffered_inputs,
                     reward_weights=self.reward_weights.tolist(),
                     strategies={f"{i}:{s.kind}:{s.name}": s.state_dict() for i, s in enumerate(self.strategies)})
        return state

    def load_posttrain_state(self, state):
        super().load_posttrain_state(state)
        self._step = state["trl_step"]
        self._buffered_inputs = state["trl_buffered_inputs"]
        saved = state.get("strategies", {})
        mine = {f"{i}:{s.kind}:{s.name}": s for i, s in enumerate(self.strategies)}
        if set(saved) != set(mine):
            raise UserError(f"--resume: the checkpoint was written with other strategies ({', '.join(saved) or 'none'}"
                            f"; configured now: {', '.join(mine) or 'none'})")
        for key, s in mine.items():
            try:
                s.load_state_dict(saved[key])
            except ValueError as exc:
                raise UserError(f"--resume: {protocol.label(s)}: {exc}") from None
        if "reward_weights" in state:
            self.reward_weights = torch.tensor(state["reward_weights"], dtype=torch.float32)

    # ------------------------------------------------------------------ update side
    def _compute_loss(self, model, inputs):
        if self._carries_no_gradient(inputs):
            return zero_loss(model)  # same (zero) gradient, without the forward and backward of the policy
        if not self._token_strategies:
            return super()._compute_loss(model, inputs)
        return self._token_weighted_loss(model, inputs)

    def _carries_no_gradient(self, inputs) -> bool:
        """All advantages of this micro-batch are 0 on every process and nothing else enters the loss (no KL, entropy
        bonus, router loss or token strategy that shapes advantages or adds a loss term): the policy gradient is
        exactly 0, so the forward and backward passes are skipped (decided over all processes, logged)."""
        mode = "train" if self.model.training else "eval"
        if mode != "train" or self.beta != 0.0 or self._entropy_bonus_enabled or self.aux_loss_enabled \
                or self._token_shapes_loss:
            return False
        peak = self.accelerator.reduce(inputs["advantages"].detach().abs().max().reshape(1).float(), reduction="sum")
        skip = bool(peak.item() == 0.0)
        self._metrics[mode]["zero_advantage/skipped_fraction"].append(float(skip))
        return skip
