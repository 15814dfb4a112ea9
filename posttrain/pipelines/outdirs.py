"""Where a run writes, and how a new run replaces a previous one without a failed attempt ever losing it.

``output.dir`` (``D``) is the run's final place.  A run is laid out in one of two ways, decided by
:func:`plan_run_dirs` from the recipe and what is on disk *before anything is written*:

* **in place** (``work == D``): a fresh run into a missing or empty ``D``, or ``--resume`` of the run in ``D``.
  There is nothing to protect; a fresh attempt that fails with a :class:`~posttrain.errors.UserError` removes
  what it wrote, so ``D`` is missing / empty again and the corrected command is never refused.
* **beside** (``work == D.incoming``): a fresh run over a previous run with ``output.overwrite: true``.  The new
  run writes into the sibling ``D.incoming``; ``D`` is not touched until the new run has finished, then
  :meth:`RunDirs.commit` swaps it in by renames (``D -> D.replaced-<pid>``, ``D.incoming -> D``, then the old run
  is removed).  A ``UserError`` removes ``D.incoming``; a run that stops itself (``RunStopped``, checkpoint
  written) or is killed keeps ``D.incoming``: ``--resume`` continues it there (it is preferred over ``D`` when it
  holds a complete checkpoint) and swaps it in when it finishes; a fresh run removes it.

Before any of this, a non-empty ``D`` without ``overwrite`` is refused, as is a non-empty ``D`` that is not a
posttrain run (no ``recipe.resolved.yaml`` / ``summary.json``): ``overwrite`` never deletes a directory posttrain
did not write.

Several processes (DeepSpeed / torchrun: one ``posttrain run`` per rank) must agree on ``work``.  Every rank calls
:func:`plan_run_dirs`, which only reads the file system, and then :func:`barrier`, so no rank decides after rank 0
has started writing; only rank 0 creates, removes or renames directories (:meth:`RunDirs.prepare`,
:meth:`RunDirs.abandon`, :meth:`RunDirs.commit`), each followed by a barrier where all ranks take part.  The
barrier needs the process group, which exists once a TRL config has been built (the pre-flight check builds one
before the plan is acted on).  The name ``D.incoming`` is deterministic, so it is the same on every rank and on
every node of a shared file system; two runs started at once into the same ``D`` are not supported (as before).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError

INCOMING_SUFFIX = ".incoming"
RUN_MARKERS = ("recipe.resolved.yaml", "summary.json")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """All ranks wait here (a no-op in a single process or before the process group exists)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def final_dir(recipe) -> Path:
    return Path(recipe.output.dir or Path("runs") / recipe.name).expanduser()


def incoming_dir(final: Path) -> Path:
    return final.with_name(final.name + INCOMING_SUFFIX)


def looks_like_run(d: Path) -> bool:
    return any((d / m).is_file() for m in RUN_MARKERS)


def _has_complete_checkpoint(run: Path) -> bool:
    from posttrain.trainers.checkpointing import latest_complete_checkpoint

    return latest_complete_checkpoint(run / "trainer") is not None


def _check_writable(target: Path) -> None:
    """``target`` can be created / written: its nearest existing ancestor is a writable directory."""
    p = target
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        raise UserError(f"output.dir '{target}' cannot be created: '{p}' is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"output.dir '{target}' is not writable (no write permission on '{p}')")


@dataclass
class RunDirs:
    """``final`` = output.dir; ``work`` = where this attempt writes (``final`` or ``final.incoming``)."""

    final: Path
    work: Path
    resume: bool
    created: bool = False   # rank 0 created ``work`` for this (fresh) attempt: abandon() removes it again
    prepared: bool = False  # rank 0 prepared ``work`` (abandon() only undoes what prepare() did)

    @property
    def beside(self) -> bool:
        return self.work != self.final

    def prepare(self) -> None:
        """Rank 0: make ``work`` ready (a fresh run removes a stale ``D.incoming``); every rank: barrier.  The first
        barrier makes sure every rank has planned (read the file system) before rank 0 changes it."""
        barrier()
        if is_main():
            incoming = incoming_dir(self.final)
            if not self.resume and incoming.exists():
                if _has_complete_checkpoint(incoming):
                    print(f"[posttrain] removing the unfinished attempt in {incoming} (started again without "
                          f"--resume)", flush=True)
                shutil.rmtree(incoming)
            existed = self.work.exists()
            try:
                self.work.mkdir(parents=True, exist_ok=True)
                probe = self.work / ".write-test"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                raise UserError(f"output.dir '{self.work}' is not writable: {exc.strerror}") from None
            self.created = not existed
            self.prepared = True
        barrier()

    def abandon(self) -> None:
        """After a ``UserError``: rank 0 removes what this fresh attempt wrote (a resumed run is left as it is)."""
        if not is_main() or self.resume or not self.prepared or not self.work.exists():
            return
        if self.created:
            shutil.rmtree(self.work, ignore_errors=True)
        else:  # plan_run_dirs puts a fresh run only into a missing or empty directory: empty it again
            for child in self.work.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    def commit(self) -> None:
        """After the run finished: rank 0 swaps ``work`` in as ``final`` (beside layout); every rank: barrier."""
        barrier()
        if is_main() and self.beside:
            old = self.final.with_name(f"{self.final.name}.replaced-{os.getpid()}")
            moved = False
            if self.final.exists():
                os.rename(self.final, old)
                moved = True
            try:
                os.rename(self.work, self.final)
            except OSError as exc:
                if moved:
                    os.rename(old, self.final)
                raise UserError(f"output.dir: could not move the finished run from '{self.work}' to "
                                f"'{self.final}' ({exc.strerror}); the run is complete in '{self.work}'") from None
            if moved:
                shutil.rmtree(old, ignore_errors=True)
                print(f"[posttrain] replaced the previous run in {self.final}", flush=True)
        barrier()

    def stopped_note(self) -> str:
        """Appended to a ``RunStopped`` message: where the attempt is when it did not replace the previous run."""
        if not self.beside:
            return ""
        return (f"; the previous run in {self.final} is untouched, this attempt is in {self.work} "
                f"(--resume continues it and then replaces {self.final})")


def plan_run_dirs(recipe, resume: bool) -> RunDirs:
    """Decide where this attempt writes.  Reads the file system, writes nothing; refusals are ``UserError``s."""
    final = final_dir(recipe)
    if final.exists() and not final.is_dir():
        raise UserError(f"output.dir '{final}' exists and is not a directory")
    incoming = incoming_dir(final)
    if resume:
        if incoming.is_dir() and _has_complete_checkpoint(incoming):
            return RunDirs(final, incoming, resume=True)
        return RunDirs(final, final, resume=True)
    if final.is_dir() and any(final.iterdir()):
        if not recipe.output.overwrite:
            raise UserError(f"output.dir '{final}' already holds a run; set output.overwrite=true, pass --resume, "
                            f"or choose another output.dir")
        if not looks_like_run(final):
            raise UserError(f"output.dir '{final}' is not empty and is not a posttrain run (no "
                            f"{' or '.join(RUN_MARKERS)}); output.overwrite never deletes it: choose another "
                            f"output.dir")
        work = incoming
    else:
        work = final
    if incoming.exists() and not recipe.output.overwrite and _has_complete_checkpoint(incoming):
        raise UserError(f"output.dir: '{incoming}' holds an unfinished attempt with checkpoints; pass --resume to "
                        f"continue it, or set output.overwrite=true to start again")
    _check_writable(work)
    return RunDirs(final, work, resume=False)
