"""Data-mixture (domain) weighting for the SFT and GRPO trainers (glue; the update rules are the ``domain``
strategies of :mod:`posttrain.weighting.domains`, the sampler is :class:`posttrain.data.mixture.DomainSampler`).

With ``data.train: {mixture: [...]}`` the trainer's train sampler is a :class:`DomainSampler` (GRPO: TRL's
``RepeatSampler`` layout, so prompt groups stay intact). Every batch is observed by domain: SFT the token-mean NLL
of each sample, GRPO the mixed reward of each completion; the per-domain sums are all-reduced at once, so the
numbers are the same on every rank. Every ``update_every`` optimizer steps (at the end of the step) a
:class:`~posttrain.weighting.protocol.DomainContext` is built -- ``losses_D`` = the mean since the last update
(SFT: NLL; GRPO: **the negative mean reward**, the protocol's convention, so "lower is better" holds for both),
``counts_D`` = samples (GRPO: completions) seen, ``sizes_D``, ``weights_D`` (the mix in use), ``step`` (completed
optimizer steps) -- and the strategy's ``domain_weights`` go to the sampler, its ``domain_loss_weights`` to the
loss: SFT multiplies each sample's loss (the token-mean denominator is TRL's, unweighted), GRPO each completion's
advantage (= its group's policy-gradient loss; a KL term, ``beta > 0``, is not scaled -- a choice).

Gradient services (``influence``, ``bilevel``), over the trainable (LoRA) parameters, reduced over processes:

* ``domain_gradients()`` ``[D, P]`` -- SFT: the gradient of the token-mean NLL of ``gradient_rows`` rows of each
  domain (drawn with the context's seeded generator, split over processes); GRPO: the gradient of the on-policy
  GRPO/DAPO surrogate ``-sum A_i log pi / T_d`` of the last generation batch restricted to the domain's completions
  (a domain absent from the batch gets a zero row: no measurement);
* ``heldout_gradient()`` ``[P]`` -- the token-mean NLL of the first ``heldout_rows`` rows of ``data.heldout`` (SFT:
  its completions; GRPO: its reference answers ``answer`` / ``completion`` after the rendered prompt, a choice: the
  held-out reward has no gradient without sampling); ``heldout_losses()`` ``[1]`` that NLL.

Logged every step: ``domain/<name>/weight`` (the mix in use), ``domain/<name>/share`` (of the batch's rows) and
``domain/<name>/loss`` (SFT) or ``domain/<name>/reward`` (GRPO); the strategy's own keys via ``ctx.log``.
Checkpoints carry the sampler's state at the consumed rows, the weights and loss factors, the strategy's state, the
statistics since the last update and the context generator, so a resumed run draws the same batches.
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from transformers import TrainerCallback

from posttrain.data.mixture import DOMAIN_COLUMN, DomainSampler, split_domain_spec
from posttrain.debug import DOMAIN_DUMP_ENV
from posttrain.errors import UserError
from posttrain.losses import selective_logprobs_and_entropy
from posttrain.weighting import protocol
from posttrain.weighting.protocol import DomainContext, StrategyEnv, with_hook

__all__ = ["DomainMixtureMixin", "DomainSetup"]


class DomainSetup:
    """What the pipeline hands the trainer: domain ``names``, initial ``weights`` (or None), the strategy ``spec``
    (``weighting.domains.0`` or None: ``fixed``) and the ``heldout`` dataset (or None)."""

    def __init__(self, names: Sequence[str], weights: Optional[Sequence[float]], spec: Any = None, heldout=None):
        self.names, self.weights, self.spec, self.heldout = tuple(names), weights, spec, heldout


class _DomainStepEnd(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._domain_step_end(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._domain_write_dump()


class DomainMixtureMixin:
    """Domain sampling, statistics, updates and services; see the module docstring. A trainer calls
    :meth:`_setup_domains` after TRL's ``__init__``, :meth:`_domain_observe` on each training batch and reads
    :meth:`_domain_factors_of` for the loss factors; ``_domain_sampler_layout()`` gives its sampler layout."""

    _domain: Optional[DomainSetup] = None
    _domain_sampler: Optional[DomainSampler] = None
    _domain_dump: Optional[Dict[str, list]] = None

    # ------------------------------------------------------------------ set-up
    def _setup_domains(self, setup: Optional[DomainSetup]) -> None:
        self._domain = setup
        if setup is None:
            return
        spec, self._domain_options = split_domain_spec(setup.spec or {"name": "fixed"})
        ids = list(self.train_dataset[DOMAIN_COLUMN]) if DOMAIN_COLUMN in self.train_dataset.column_names else None
        if ids is None:
            raise UserError(f"data.train: the prepared training data lost its '{DOMAIN_COLUMN}' column")
        D = len(setup.names)
        self._domain_rows = [[i for i, d in enumerate(ids) if d == k] for k in range(D)]
        self._domain_sizes = tuple(len(r) for r in self._domain_rows)
        for name, n in zip(setup.names, self._domain_sizes):
            if n == 0:
                raise UserError(f"data.train.mixture: domain '{name}' has no rows after TRL's data preparation")
        max_steps = self.args.max_steps if self.args.max_steps > 0 else None
        env = StrategyEnv(max_steps=max_steps, has_eval_data=setup.heldout is not None,
                          world_size=self.accelerator.num_processes)
        try:
            self._domain_strategy = protocol.build_strategy("domain", spec, env)
        except (KeyError, ValueError) as exc:
            raise UserError(f"weighting.domains.0: {exc}") from None
        s = self._domain_strategy
        if s.name == "fixed" and setup.weights is not None and s.config.weights is None:
            s.config.weights = list(setup.weights)  # the mixture's initial weights are the fixed mix
        if getattr(s.config, "sharded_gradients", False):
            raise UserError("weighting.domains.0.sharded_gradients: the trainer's gradient services return full "
                            "gradients (summed over processes); set it to false")
        if s.needs_heldout and setup.heldout is None:
            raise UserError(f"weighting.domains.0: {s.name} needs a held-out set: set data.heldout")
        self._domain_generator = torch.Generator().manual_seed(int(self.args.seed) * 7_919 + 17)
        self._domain_stats = torch.zeros(2, D, dtype=torch.float64)
        self._domain_gradient_params = None
        self._domain_factors: Optional[List[float]] = None
        natural = [n / sum(self._domain_sizes) for n in self._domain_sizes]
        if setup.weights is not None:
            weights = list(setup.weights)
        elif with_hook([s], "domain_weights") and not s.needs_heldout:
            weights = self._domain_call("domain_weights", self._domain_context(natural, step=0, services=False))
        else:
            weights = natural
        self._domain_weights = [float(w) for w in weights]
        if with_hook([s], "domain_loss_weights"):
            self._domain_factors = [float(f) for f in self._domain_call(
                "domain_loss_weights", self._domain_context(self._domain_weights, step=0, services=False))]
        self._domain_rows_per_micro = self._domain_sampler_layout()[3]
        self.args.ignore_data_skip = True  # the sampler's checkpointed state positions the data, not batch skipping
        self._domain_dump = {"units": [], "batches": []} if os.environ.get(DOMAIN_DUMP_ENV) else None
        self.add_callback(_DomainStepEnd(self))
        for line in protocol.strategy_warnings([s]):
            import logging

            logging.getLogger("posttrain.trainers").warning("weighting.domains.0: %s", line)

    def _get_train_sampler(self, dataset=None):
        if self._domain is None:
            return super()._get_train_sampler(dataset)
        unit_size, mini_repeat, repeat_count, self._domain_rows_per_micro = self._domain_sampler_layout()
        self._domain_sampler = DomainSampler(self._domain_rows, self._domain_weights, unit_size=unit_size,
                                             mini_repeat=mini_repeat, repeat_count=repeat_count,
                                             seed=int(self.args.seed))
        if self._domain_dump is not None:
            self._domain_sampler.unit_log = self._domain_dump["units"]
        if getattr(self, "_domain_pending_state", None) is not None:
            self._domain_sampler.load_state_dict(self._domain_pending_state)
            self._domain_pending_state = None
        return self._domain_sampler

    # ------------------------------------------------------------------ statistics and metrics
    def _domain_observe(self, domain_ids: torch.Tensor, values: torch.Tensor, *, key: str, sign: float) -> None:
        """One training batch: ``values`` (this process's rows, NaN = no value) by ``domain_ids``; all-reduced
        now, logged, and added to the statistics of the next update (``sign * value``: the loss convention)."""
        D = len(self._domain.names)
        ids = domain_ids.detach().long().cpu()
        vals = values.detach().double().cpu()
        ok = torch.isfinite(vals)
        local = torch.zeros(3, D, dtype=torch.float64)
        local[0].index_add_(0, ids[ok], vals[ok])
        local[1].index_add_(0, ids[ok], torch.ones(int(ok.sum()), dtype=torch.float64))
        local[2].index_add_(0, ids, torch.ones(ids.numel(), dtype=torch.float64))
        if self.accelerator.num_processes > 1:
            local = self.accelerator.reduce(local.to(self.accelerator.device), reduction="sum").cpu()
        self._domain_stats[0] += sign * local[0]
        self._domain_stats[1] += local[1]
        if self._domain_dump is not None:
            self._domain_dump["batches"].append({"step": int(self.state.global_step), "domain_ids": ids.tolist(),
                                                 "weights": list(self._domain_weights)})
        metrics = self._metrics["train"]
        rows = float(local[2].sum())
        for d, name in enumerate(self._domain.names):
            metrics[f"domain/{name}/weight"].append(self._domain_weights[d])
            metrics[f"domain/{name}/share"].append(float(local[2, d]) / max(rows, 1.0))
            if local[1, d] > 0:
                metrics[f"domain/{name}/{key}"].append(float(local[0, d] / local[1, d]))

    def _domain_factors_of(self, domain_ids: torch.Tensor) -> Optional[torch.Tensor]:
        """``[n]`` loss factors of rows by domain (None: the strategy sets none)."""
        if self._domain is None or self._domain_factors is None:
            return None
        return torch.tensor(self._domain_factors, dtype=torch.float32)[domain_ids.detach().long().cpu()]

    # ------------------------------------------------------------------ updates
    def _domain_context(self, weights_D, *, step: int, services: bool = True) -> DomainContext:
        counts = self._domain_stats[1]
        losses = torch.where(counts > 0, self._domain_stats[0] / counts.clamp(min=1), torch.zeros_like(counts))
        ctx = DomainContext(domains=self._domain.names, weights_D=tuple(float(w) for w in weights_D),
                            sizes_D=self._domain_sizes, step=int(step), losses_D=losses, counts_D=counts.clone(),
                            generator=self._domain_generator,
                            all_reduce_sum=partial(self.accelerator.reduce, reduction="sum"),
                            log=lambda k, v: self._metrics["train"][k].append(float(v)))
        if services:
            ctx.domain_gradients = self._domain_gradients
            ctx.heldout_gradient = partial(self._domain_heldout, gradient=True)
            ctx.heldout_losses = partial(self._domain_heldout, gradient=False)
        return ctx

    def _domain_call(self, hook: str, ctx: DomainContext) -> List[float]:
        """Run one hook; a failure is one line naming the strategy and the hook, raised on every process when it
        happens on any."""
        from posttrain.errors import StrategyFailed
        from posttrain.trainers.guards import raise_if_failed_anywhere

        result, failure = None, None
        try:
            result = list(getattr(self._domain_strategy, hook)(ctx))
        except (UserError,):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing strategy is one line naming it and the hook
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failure = StrategyFailed(f"{protocol.label(self._domain_strategy)} failed in {hook}: "
                                     f"{type(exc).__name__}: {msg}")
            failure.__cause__ = exc
        raise_if_failed_anywhere(self.accelerator, failure)
        return result

    def _domain_step_end(self, global_step: int) -> None:
        if self._domain is None or global_step % self._domain_options.update_every:
            return
        from posttrain.errors import StrategyFailed

        s = self._domain_strategy
        ctx = self._domain_context(self._domain_weights, step=global_step)
        try:
            if with_hook([s], "domain_weights"):
                self._domain_weights = [float(w) for w in self._domain_call("domain_weights", ctx)]
                ctx.weights_D = tuple(self._domain_weights)
            if with_hook([s], "domain_loss_weights"):
                self._domain_factors = [float(f) for f in self._domain_call("domain_loss_weights", ctx)]
        except StrategyFailed as exc:
            self.guard.stop_reason = str(exc)
            return
        if self._domain_sampler is not None:
            self._domain_sampler.set_weights(self._domain_weights)
        self._domain_stats.zero_()

    # ------------------------------------------------------------------ gradient services
    def _domain_params(self):
        if self._domain_gradient_params is None:
            from posttrain.trainers.grpo_services import select_parameters

            self._domain_gradient_params = select_parameters(self, None)
        return self._domain_gradient_params

    def _nll_grad(self, batches: List[Dict[str, torch.Tensor]], *, gradient: bool) -> torch.Tensor:
        """Gradient ``[P]`` (or the value ``[1]``) of the token-mean NLL of the labelled rows of every process
        (``batches``: this process's share; labels ``-100`` outside the loss tokens), summed over processes."""
        params = self._domain_params()
        model = self.accelerator.unwrap_model(self.model)
        device = self.accelerator.device
        tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        total = self.accelerator.reduce(torch.tensor([float(tokens)], device=device), reduction="sum")
        total = float(total.item()) if torch.is_tensor(total) else float(total)
        grad = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=device)
        value = torch.zeros(1, dtype=torch.float64, device=device)
        was_training = model.training
        model.eval()  # no dropout in a measurement
        try:
            for b in batches:
                with torch.set_grad_enabled(gradient):
                    logits = model(input_ids=b["input_ids"].to(device),
                                   attention_mask=b["attention_mask"].to(device), use_cache=False).logits
                    labels = b["labels"].to(device)[:, 1:]
                    # per-label log-probs without a [B, T, V] log-softmax copy; ignore_index labels give 0
                    picked, _ = selective_logprobs_and_entropy(logits[:, :-1].float(), None, labels,
                                                               compute_entropy=False)
                    loss = -picked.sum() / max(total, 1.0)
                value += loss.detach().double()
                if gradient:
                    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
                    grad += torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float()
                                       for g, p in zip(grads, params)])
        finally:
            model.train(was_training)
        out = grad if gradient else value
        return self.accelerator.reduce(out, reduction="sum") if self.accelerator.num_processes > 1 else out

    def _domain_heldout(self, *, gradient: bool) -> torch.Tensor:
        if self._domain.heldout is None:
            raise UserError("weighting.domains.0: the strategy asked for the held-out set; set data.heldout")
        rows = list(range(min(self._domain_options.heldout_rows, len(self._domain.heldout))))
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        return self._nll_grad(self._domain_heldout_batches(rows[rank::world]), gradient=gradient)

    def _domain_gradients(self) -> torch.Tensor:
        raise NotImplementedError  # per trainer: SFT from rows of each domain, GRPO from the last rollout

    def _domain_draw(self, d: int) -> List[int]:
        """``gradient_rows`` dataset rows of domain ``d`` (the same on every rank: the context generator)."""
        rows = self._domain_rows[d]
        idx = torch.randint(len(rows), (self._domain_options.gradient_rows,), generator=self._domain_generator)
        return [rows[int(i)] for i in idx]

    def _domain_write_dump(self) -> None:
        """``POSTTRAIN_DEBUG_DOMAIN_DUMP``: this rank's drawn units and batches (posttrain.debug)."""
        if self._domain is None or self._domain_dump is None:
            return
        out = Path(os.environ[DOMAIN_DUMP_ENV])
        out.mkdir(parents=True, exist_ok=True)
        rank = self.accelerator.process_index
        (out / f"domains_rank{rank}.json").write_text(json.dumps({"rank": rank, **self._domain_dump}))

    # ------------------------------------------------------------------ checkpoint state
    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)   # also loads the posttrain state (CheckpointStateMixin)
        if self._domain is not None and checkpoint is not None:
            self._domain_rng_checkpoint = checkpoint

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """On resume, the RNG states are restored again after the first batch: with ``ignore_data_skip`` HF restores
        them before opening the resumed epoch's iterator, which draws from the global RNG (torch's DataLoader base
        seed) where the uninterrupted run drew nothing, so GRPO's sampling would diverge (HF's own skip path
        restores after the first batch for the same reason)."""
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        ckpt, self._domain_rng_checkpoint = getattr(self, "_domain_rng_checkpoint", None), None
        if ckpt is not None:
            from transformers import Trainer

            Trainer._load_rng_state(self, ckpt)   # the RNG states only, not the posttrain state again
        return batches

    def posttrain_state(self) -> Dict[str, Any]:
        state = super().posttrain_state()
        if self._domain is None:
            return state
        consumed = self.state.global_step * self.args.gradient_accumulation_steps * self._domain_rows_per_micro
        state["domains"] = {
            "names": list(self._domain.names),
            "sampler": self._domain_sampler.state_at(consumed) if self._domain_sampler is not None else None,
            "weights_D": list(self._domain_weights), "factors_D": self._domain_factors,
            "strategy": self._domain_strategy.state_dict(), "stats": self._domain_stats.clone(),
            "generator": self._domain_generator.get_state()}
        return state

    def load_posttrain_state(self, state: Dict[str, Any]) -> None:
        super().load_posttrain_state(state)
        if self._domain is None:
            return
        saved = state.get("domains")
        if saved is None or list(saved["names"]) != list(self._domain.names):
            raise UserError(f"--resume: the checkpoint was written with other domains "
                            f"({', '.join(saved['names']) if saved else 'none'}; now: {', '.join(self._domain.names)})")
        self._domain_weights, self._domain_factors = list(saved["weights_D"]), saved["factors_D"]
        try:
            self._domain_strategy.load_state_dict(saved["strategy"])
        except ValueError as exc:
            raise UserError(f"--resume: {protocol.label(self._domain_strategy)}: {exc}") from None
        self._domain_stats = saved["stats"].clone()
        self._domain_generator.set_state(saved["generator"])
        if saved["sampler"] is not None:
            if self._domain_sampler is not None:
                self._domain_sampler.load_state_dict(saved["sampler"])
            else:
                self._domain_pending_state = saved["sampler"]
