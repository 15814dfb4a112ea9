"""Checkpoints that can be trusted after a crash, and exact resume.

The HF Trainer writes ``checkpoint-N/`` file by file (model, optimizer, scheduler, RNG states, trainer state) and
picks the highest-numbered directory on resume, so a run killed while saving resumes from a half-written
checkpoint.  Here a checkpoint counts only once ``posttrain_complete.json`` exists in it, written last, after every
rank has saved (a barrier) and after posttrain's own state (``posttrain_state.pt``: the state of every stateful
reweighting strategy, TRL's rollout buffer and step counter, our random generators).  Old checkpoints are rotated
only after the new one is complete, so a crash while saving never leaves fewer complete checkpoints than
``save_total_limit``.  On resume, incomplete checkpoints are renamed ``incomplete-checkpoint-N`` (kept for
inspection, never deleted) and training continues from the newest complete one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

COMPLETE_MARKER = "posttrain_complete.json"
STATE_FILE = "posttrain_state.pt"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _checkpoints(trainer_dir: Path) -> List[tuple[int, Path]]:
    if not trainer_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in trainer_dir.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))]
    return sorted(found)


def is_complete(ckpt: Path) -> bool:
    return (ckpt / COMPLETE_MARKER).is_file()


def latest_complete_checkpoint(trainer_dir: Path) -> Optional[Path]:
    done = [p for _, p in _checkpoints(Path(trainer_dir)) if is_complete(p)]
    return done[-1] if done else None


def quarantine_incomplete(trainer_dir: Path) -> List[Path]:
    """Rename every incomplete ``checkpoint-N`` to ``incomplete-checkpoint-N`` (never deletes anything)."""
    moved = []
    for _, p in _checkpoints(Path(trainer_dir)):
        if not is_complete(p):
            target = p.with_name(f"incomplete-{p.name}")
            if target.exists():
                target = p.with_name(f"incomplete-{p.name}-{int(time.time())}")
            p.rename(target)
            moved.append(target)
    return moved


def rotate_complete(trainer_dir: Path, limit: Optional[int], keep: Optional[Path] = None) -> None:
    """Keep the newest ``limit`` complete checkpoints (and ``keep``); incomplete ones are left alone."""
    if not limit or limit <= 0:
        return
    done = [p for _, p in _checkpoints(Path(trainer_dir)) if is_complete(p)]
    for p in done[:-limit]:
        if keep is not None and p.resolve() == Path(keep).resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)


def checkpoint_step(ckpt: Path) -> int:
    m = _CKPT.match(Path(ckpt).name)
    if not m:
        raise ValueError(f"not a checkpoint directory: {ckpt}")
    return int(m.group(1))


class CheckpointStateMixin:
    """Mixin for our HF/TRL trainer subclasses: completion markers, deferred rotation, posttrain state.

    Subclasses extend :meth:`posttrain_state` / :meth:`load_posttrain_state` (call ``super()``) with the state of
    their stateful strategies.  Every rank saves and loads its own copy (``posttrain_state_rank{N}.pt`` beside the
    rank-0 file when world size > 1) because rollout buffers are per rank.
    """

    def posttrain_state(self) -> Dict[str, Any]:
        return {}

    def load_posttrain_state(self, state: Dict[str, Any]) -> None:
        pass

    def _state_path(self, ckpt: Path) -> Path:
        rank = self.args.process_index
        return ckpt / (STATE_FILE if self.args.world_size == 1 else f"posttrain_state_rank{rank}.pt")

    def _save_checkpoint(self, model, trial):
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only after the new checkpoint is complete (below)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        run_dir = Path(self._get_output_dir(trial=trial))
        ckpt = run_dir / f"checkpoint-{self.state.global_step}"
        ckpt.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path(ckpt).with_suffix(".tmp")
        torch.save(self.posttrain_state(), tmp)
        os.replace(tmp, self._state_path(ckpt))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            marker = ckpt / COMPLETE_MARKER
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"global_step": self.state.global_step, "time": time.time(),
                                       "world_size": self.args.world_size}))
            os.replace(tmp, marker)
            rotate_complete(run_dir, limit, keep=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _load_rng_state(self, checkpoint):
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = self._state_path(Path(checkpoint))
        if path.is_file():
            # weights_only: the state holds only containers, numbers, strings and tensors, so no pickled code runs.
            self.load_posttrain_state(torch.load(path, map_location="cpu", weights_only=True))
