"""``posttrain launch``: run a recipe on N processes (per node) with the DeepSpeed launcher.

It builds and runs ``python -m deepspeed.launcher.runner --num_gpus N --master_port P [--hostfile F
--master_addr A] --module posttrain run RECIPE [overrides]`` (the same as the ``deepspeed`` console script, but
with this interpreter, so the venv of ``posttrain`` is the one that runs).  The launcher starts each process as
``python -u -m posttrain --local_rank=R run …`` with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set;
on CPU the processes talk over gloo, on GPUs over NCCL.  ``--num_gpus`` is the launcher's name for "processes per
node" and works on CPU too (deepspeed 0.19.8, measured here).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from typing import List, Optional, Sequence

from posttrain.errors import UserError


def build_launch_command(recipe: str, overrides: Sequence[str] = (), *, nproc: int, master_port: int,
                         hostfile: Optional[str] = None, master_addr: Optional[str] = None,
                         resume: bool = False, python: Optional[str] = None) -> List[str]:
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    if not 0 < master_port < 65536:
        raise UserError(f"--master_port must be in 1..65535, got {master_port}")
    cmd = [python or sys.executable, "-m", "deepspeed.launcher.runner"]
    if hostfile:
        cmd += ["--hostfile", hostfile]
    if master_addr:
        cmd += ["--master_addr", master_addr]
    cmd += ["--num_gpus", str(nproc), "--master_port", str(master_port), "--module", "posttrain", "run", recipe]
    cmd += list(overrides)
    if resume:
        cmd.append("--resume")
    return cmd


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def launch(recipe_path: str, overrides: Sequence[str], *, recipe=None, nproc: int, master_port: Optional[int],
           hostfile: Optional[str], master_addr: Optional[str], resume: bool, dry_run: bool) -> int:
    import os

    from posttrain.distributed import deepspeed_config, free_port

    if recipe is not None and (recipe.distributed.zero_stage or recipe.distributed.config):
        deepspeed_config(recipe.distributed)  # a missing / unreadable config: one line here, not once per rank
    if recipe is not None and not dry_run:
        from posttrain.pipelines.checks import check_run

        check_run(recipe, standalone=True)  # bad input: one line here, before any rank starts
    if not _has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the launcher's own "Setting accelerator to CPU" warning

    if hostfile is not None and not os.path.isfile(hostfile):
        raise UserError(f"--hostfile '{hostfile}' does not exist")
    port = master_port if master_port is not None else free_port()
    cmd = build_launch_command(recipe_path, overrides, nproc=nproc, master_port=port, hostfile=hostfile,
                               master_addr=master_addr, resume=resume)
    print(shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    try:
        return subprocess.call(cmd)
    finally:
        if hostfile is None:  # one node: this machine holds every rank's shared-memory allreduce file
            from posttrain.distributed import remove_shm_allreduce_buffers

            remove_shm_allreduce_buffers(port=port)
