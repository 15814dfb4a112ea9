"""ZeRO-2 / ZeRO-3 with 2 real processes over gloo, using the shipped DeepSpeed configs: for a fixed global batch
split across the ranks, the GRPO (DAPO) loss with the trainer's normaliser and the parameters after one optimizer
step equal a single process on the whole batch.

Real components: the tiny model, ``deepspeed.initialize`` with ``posttrain/configs/zero{2,3}.json``,
``policy_loss`` and :func:`posttrain.losses.policy.trl_scaled_loss` (the trainer's DAPO normaliser: the local token sum
divided by global tokens / processes, which DeepSpeed's gradient averaging turns into the global token mean).  The
ranks hold different numbers of valid tokens, so a per-rank token mean would not match (checked too).
"""
import os

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
B, T_PROMPT, T_COMP, LR = 8, 5, 6, 0.5


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (B, T_PROMPT + T_COMP), generator=g)
    lengths = torch.tensor([6, 6, 5, 6, 2, 1, 3, 2])  # rank 0 holds 23 valid tokens, rank 1 holds 8
    mask = (torch.arange(T_COMP)[None, :] < lengths[:, None]).float()
    adv = torch.randn(B, generator=g)
    old_shift = 0.3 * torch.randn(B, T_COMP, generator=g)  # pi_old != pi_theta: some ratios are clipped
    return ids, mask, adv, old_shift


def _loss(model, ids, mask, adv, old_shift, *, n_global_tokens=None, world=1):
    from posttrain.losses import policy_loss
    from posttrain.losses.policy import trl_scaled_loss

    logits = model(input_ids=ids).logits[:, T_PROMPT - 1:-1, :].float()
    logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, T_PROMPT:, None]).squeeze(-1)
    old = logps.detach() + old_shift
    loss, _ = policy_loss(logps, old, adv, mask, clip_low=0.2, clip_high=0.2, aggregation="token_mean")
    if n_global_tokens is None:
        return loss
    return trl_scaled_loss(loss, "dapo", local_tokens=(mask * 1.0).sum(), num_items_in_batch=n_global_tokens,
                           num_processes=world, gradient_accumulation_steps=1, steps_per_generation=1, training=True)


def _worker(rank, port, out_dir, stage):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    import deepspeed

    from posttrain.distributed import deepspeed_config, resolve_auto
    from posttrain.models import load_tiny_model
    from posttrain.recipes.schema import DistributedSection

    deepspeed.init_distributed(dist_backend="gloo")
    model, _ = load_tiny_model()
    cfg = resolve_auto(deepspeed_config(DistributedSection(zero_stage=stage)), micro_batch_size=B // 2, world_size=2,
                       gradient_clipping=0.0, hidden_size=model.config.hidden_size)
    cfg["zero_allow_untested_optimizer"] = True  # a torch optimizer, as the HF Trainer passes its own (it sets this)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=cfg)
    ids, mask, adv, old_shift = _batch()
    rows = slice(rank * B // 2, (rank + 1) * B // 2)
    loss = _loss(engine, ids[rows], mask[rows], adv[rows], old_shift[rows], n_global_tokens=mask.sum(), world=2)
    local_token_mean = _loss(engine, ids[rows], mask[rows], adv[rows], old_shift[rows]).detach()
    engine.backward(loss)
    engine.step()
    params = list(engine.module.named_parameters())
    if stage == 3:
        assert all(p.ds_numel > p.ds_tensor.numel() for _, p in params if p.ds_numel > 1000), "not sharded"
        ctx = deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None)
    else:
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx:
        state = {n: p.detach().clone() for n, p in params}
    torch.save({"loss": loss.detach(), "local_token_mean": local_token_mean, "params": state},
               os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.barrier()


def _reference():
    from posttrain.models import load_tiny_model

    model, _ = load_tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    ids, mask, adv, old_shift = _batch()
    loss = _loss(model, ids, mask, adv, old_shift)
    loss.backward()
    opt.step()
    return loss.detach(), before, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_zero_step_equals_single_process(tmp_path, stage, one_torch_thread):
    from posttrain.distributed import free_port

    mp.start_processes(_worker, args=(free_port(), str(tmp_path), stage), nprocs=2, join=True, start_method="spawn")
    ref_loss, before, ref_after = _reference()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))

    # the loss of the global batch: mean over ranks of the trainer-normalised local losses
    assert torch.allclose((r0["loss"] + r1["loss"]) / 2, ref_loss, atol=1e-6, rtol=1e-5)
    # ...which a per-rank token mean would miss (the ranks hold 23 and 8 valid tokens)
    assert abs(float((r0["local_token_mean"] + r1["local_token_mean"]) / 2 - ref_loss)) > 1e-3

    moved = 0
    for name, ref in ref_after.items():
        assert torch.equal(r0["params"][name], r1["params"][name]), f"ranks disagree on {name}"
        assert torch.allclose(r0["params"][name], ref, atol=2e-6, rtol=1e-5), name
        moved += int(not torch.allclose(ref, before[name], atol=1e-5))
    assert moved >= 5, "the step barely changed the weights; the comparison would prove nothing"
    assert max(float((ref_after[n] - before[n]).abs().max()) for n in before) > 1e-3
