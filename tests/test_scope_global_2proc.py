"""scope: global with 2 real processes over gloo: each rank's token weights equal the rows of a single-process
computation over the concatenated batch (statistics such as STEER's min/max and the 80/20 quantile are global)."""
import os
import socket
import types

import pytest
import torch
import torch.multiprocessing as mp

from posttrain.weighting.tokens import TokenBatch, apply_token_strategies

pytestmark = pytest.mark.multiprocess
SPECS = [{"name": "steer"}, {"name": "high_entropy", "top_fraction": 0.3}, {"name": "entropy_advantage"}]
B, T_RANK = 3, (5, 7)  # ranks hold different padded lengths, as TRL's per-process padding gives


def _full_batch():
    g = torch.Generator().manual_seed(0)
    t = max(T_RANK)
    mask = torch.zeros(2 * B, t)
    for r, tr in enumerate(T_RANK):
        mask[r * B:(r + 1) * B, :tr] = 1
    mask[1, 3:] = 0
    logps = -torch.rand(2 * B, t, generator=g) * 4
    return TokenBatch(advantages=torch.randn(2 * B, generator=g), mask=mask, logps=logps,
                      old_logps=logps - 0.1 * torch.rand(2 * B, t, generator=g),
                      entropies=torch.rand(2 * B, t, generator=g) * 3, old_entropies=torch.rand(2 * B, t, generator=g) * 3)


def _local(batch, rank):
    rows, t = slice(rank * B, (rank + 1) * B), T_RANK[rank]
    cut = lambda x: x[rows] if x.dim() == 1 else x[rows, :t]  # noqa: E731
    return batch.replace(**{k: cut(getattr(batch, k)) for k in
                            ("advantages", "mask", "logps", "old_logps", "entropies", "old_entropies")})


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    from accelerate import Accelerator

    from posttrain.trainers.grpo import PosttrainGRPOTrainer

    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2
    fake = types.SimpleNamespace(accelerator=acc, _token_strategies=SPECS, _scope="global")
    res = PosttrainGRPOTrainer._apply_token_strategies(fake, _local(_full_batch(), rank))
    torch.save({"weights": res.weights, "advantages": res.advantages}, os.path.join(out_dir, f"rank{rank}.pt"))
    acc.wait_for_everyone()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_global_scope_matches_single_process_on_concatenated_batch(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    full = apply_token_strategies(SPECS, _full_batch())
    for rank, t in enumerate(T_RANK):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(rank * B, (rank + 1) * B)
        assert torch.allclose(got["weights"], full.weights[rows, :t], atol=1e-6)
        assert torch.allclose(got["advantages"], full.advantages[rows, :t], atol=1e-6)
    # and the local (per-rank) statistics really differ from the global ones on this batch
    local0 = apply_token_strategies(SPECS, _local(_full_batch(), 0))
    assert not torch.allclose(local0.weights, full.weights[:B, :T_RANK[0]])
