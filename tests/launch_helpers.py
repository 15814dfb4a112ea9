"""``posttrain launch --nproc 2`` from a test: the real CLI and DeepSpeed launcher, 2 CPU processes over gloo.

Each rank dumps its (gathered) parameters at the start and end of training (``POSTTRAIN_DEBUG_PARAM_DUMP``).
A timeout (a rank stuck in a collective) kills the launcher's whole process group and fails the test.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: a user reward loaded by import path whose value varies between samples of the random tiny model (exact-match
#: rewards are always 0 there, which gives zero advantages and no update at all)
PARITY_REWARD = '''
def token_parity(prompts, completions, completion_ids=None, **kwargs):
    return [float(sum(ids) % 2) for ids in completion_ids]
'''


def launch_two(tmp_path: Path, recipe: str, *overrides: str, timeout: int = 300, with_parity_reward: bool = False,
               env: dict | None = None, returncode: int = 0):
    """Run ``recipe`` on 2 processes into ``tmp_path/run``; returns ``(run_dir, dumps)`` with ``dumps`` keyed
    ``"<rank>_<begin|end>"``. ``with_parity_reward`` makes ``mp_reward:token_parity`` importable; ``env`` adds
    environment variables; the launcher must exit with ``returncode`` (its stderr is ``run_dir / "stderr.txt"``)."""
    from posttrain.distributed import free_port

    paths = [str(ROOT)]
    if with_parity_reward:
        (tmp_path / "mp_reward.py").write_text(PARITY_REWARD)
        paths.append(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1",
               POSTTRAIN_DEBUG_PARAM_DUMP=str(tmp_path / "dump"), **(env or {}))
    out = tmp_path / "run"
    port = free_port()
    cmd = [sys.executable, "-m", "posttrain", "launch", "--nproc", "2", "--master_port", str(port), recipe,
           f"output.dir={out}", "model.threads=1", "output.plots=false", *overrides]
    # own process group: on a timeout the launcher's ranks are killed too
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"launch timed out after {timeout} s (a rank is stuck in a collective?)\n{stderr[-3000:]}")
    assert proc.returncode == returncode, (stdout[-3000:], stderr[-3000:])
    (out / "stderr.txt").write_text(stderr)
    # DeepSpeed's shared-memory allreduce files of this run are gone (they leak RAM otherwise; posttrain.distributed)
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    dumps = {f"{r}_{t}": torch.load(tmp_path / "dump" / f"rank{r}_{t}.pt") for r in (0, 1) for t in ("begin", "end")}
    return out, dumps
