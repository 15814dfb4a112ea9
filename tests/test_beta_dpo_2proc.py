"""beta-DPO with 2 real processes over gloo: the gaps are all-gathered, so both ranks hold the same EMA state and
batch beta, and their keep masks are the two halves of the single-process mask on the concatenated batch."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from posttrain.weighting.pairs import BetaDPO

pytestmark = pytest.mark.multiprocess
N, SEED, STEPS = 4, 7, 3


def _gaps(step):
    return torch.randn(2 * N, generator=torch.Generator().manual_seed(100 + step))


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    from accelerate import Accelerator

    from posttrain.weighting.protocol import PairContext, build_strategy

    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2
    # the strategy's hook with the services the trainer hands it (accelerate's gather, the rank-synchronised generator)
    strategy = build_strategy("pair", {"name": "beta_dpo", "rho": 0.5})
    generator = torch.Generator().manual_seed(SEED)
    out = []
    for step in range(STEPS):
        local = _gaps(step)[rank * N:(rank + 1) * N]
        zeros = torch.zeros(N)  # implicit-reward gap = policy_chosen - 0 - (0 - 0) = local
        ctx = PairContext(local, zeros, zeros, zeros, beta=0.1, mode="train", generator=generator,
                          process_index=acc.process_index, num_processes=acc.num_processes, all_gather=acc.gather)
        keep, beta = strategy.batch_beta(ctx)
        out.append((keep, beta, strategy.state_dict()))
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    acc.wait_for_everyone()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_beta_dpo_statistics_are_global(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single, gen = BetaDPO(rho=0.5), torch.Generator().manual_seed(SEED)
    for step in range(STEPS):
        keep, beta = single.step(_gaps(step), generator=gen)
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), keep)
        assert ranks[0][step][1] == ranks[1][step][1] == pytest.approx(float(beta))
        assert ranks[0][step][2] == ranks[1][step][2] == pytest.approx(single.state_dict())
