"""Debug hooks switched on by environment variables; used by the multi-process tests, harmless otherwise.

``POSTTRAIN_DEBUG_PARAM_DUMP=DIR``: every rank writes ``DIR/rank{R}_begin.pt`` and ``DIR/rank{R}_end.pt``
({parameter name: full fp32 tensor}) at the start and the end of training.  ZeRO-3 shards are gathered first, so
the files hold what each rank would use for a forward pass.  Tests use them to check that the replicas agree,
that training moved the weights, and that the saved model is the trained one.

``POSTTRAIN_DEBUG_DOMAIN_DUMP=DIR`` (a data mixture): every rank writes ``DIR/domains_rank{R}.json`` at the end of
training: the units its domain sampler drew (``unit``, ``domains``, ``weights``) and, per training batch, the
domain ids of its own rows and the weights in use (``posttrain.trainers.domains``); the multi-process test checks
that the ranks draw one stream and take disjoint slices of it.

``POSTTRAIN_DEBUG_NAN_LOSS=RANK:STEP[,RANK:STEP...]`` (fault injection): the training loss of process RANK is NaN at
the listed 1-based optimizer steps, as after a numerical blow-up on one replica; the multi-process test checks
that every process then skips the same step (:mod:`posttrain.trainers.guards`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from transformers import TrainerCallback

DUMP_ENV = "POSTTRAIN_DEBUG_PARAM_DUMP"
DOMAIN_DUMP_ENV = "POSTTRAIN_DEBUG_DOMAIN_DUMP"
NAN_LOSS_ENV = "POSTTRAIN_DEBUG_NAN_LOSS"


def nan_loss_steps(rank: int) -> frozenset:
    """The 1-based optimizer steps at which this rank's loss is made NaN (``POSTTRAIN_DEBUG_NAN_LOSS``)."""
    spec = os.environ.get(NAN_LOSS_ENV, "").strip()
    if not spec:
        return frozenset()
    pairs = [item.split(":") for item in spec.split(",") if item.strip()]
    return frozenset(int(step) for r, step in pairs if int(r) == rank)


def debug_callbacks() -> list:
    d = os.environ.get(DUMP_ENV)
    return [ParamDumpCallback(d)] if d else []


class ParamDumpCallback(TrainerCallback):
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def _dump(self, model, tag: str) -> None:
        import torch

        named = list(model.named_parameters())
        params = [p for _, p in named]
        gather = contextlib.nullcontext()
        if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3: each rank holds a shard; collective, all ranks
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        with gather:
            state = {n: p.detach().to(torch.float32).cpu().clone() for n, p in named}
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, self.dir / f"rank{int(os.environ.get('RANK', '0'))}_{tag}.pt")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._dump(model, "begin")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._dump(model, "end")
