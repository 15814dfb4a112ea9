"""``posttrain launch --nproc 2``: the tiny GRPO recipe through the real CLI, the DeepSpeed launcher, 2 processes over
gloo, ZeRO-2 and ZeRO-3 with the shipped configs (real TRL GRPOTrainer, real generation, real rewards).

Each rank dumps its (gathered) parameters at the start and end of training (``POSTTRAIN_DEBUG_PARAM_DUMP``); the
tests check that the ranks end with identical weights, that training moved them, that evaluation after training
ran (with ZeRO-3 rank-0-only generation on sharded weights would hang) and that the saved model is the trained one.
The reward is a user reward loaded by import path whose value varies between samples of the random tiny model
(exact-match rewards are always 0 there, which gives zero advantages and no update at all).
"""
import json

import pytest
import torch
from launch_helpers import launch_two

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

def _launch(tmp_path, *overrides, timeout=240):
    return launch_two(tmp_path, "recipes/tiny_grpo.yaml", "rewards=[{name: 'mp_reward:token_parity'}]", *overrides,
                      timeout=timeout, with_parity_reward=True)


def _check_run(out, dumps):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["eval"]["after"]["n"] == 8
    end0, end1, begin0 = dumps["0_end"], dumps["1_end"], dumps["0_begin"]
    assert end0.keys() == end1.keys() and end0
    for name in end0:
        assert torch.equal(end0[name], end1[name]), f"ranks end with different {name}"
        assert torch.equal(begin0[name], dumps["1_begin"][name]), f"ranks start with different {name}"
    moved = [n for n in end0 if not torch.equal(end0[n], begin0[n])]
    assert moved, "training did not change any weight"
    return moved


def _saved(out):
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def _check_merged_lora_save(out, dumps):
    """The saved model is the LoRA-merged trained policy: W + (alpha / r) * B @ A (tiny recipe: r=4, alpha=8)."""
    end, saved = dumps["0_end"], _saved(out)
    prefix = "base_model.model."
    for layer in (0, 1):
        for proj in ("self_attn.q_proj", "mlp.down_proj"):
            m = f"model.layers.{layer}.{proj}"
            base = end[f"{prefix}{m}.base_layer.weight"]
            merged = base + 2.0 * (end[f"{prefix}{m}.lora_B.default.weight"] @ end[f"{prefix}{m}.lora_A.default.weight"])
            assert torch.allclose(saved[f"{m}.weight"], merged, atol=1e-6), m
            assert not torch.allclose(saved[f"{m}.weight"], base), f"{m}: LoRA update missing from the saved model"
    assert not any("lora_" in k or "base_layer" in k for k in saved)


@pytest.mark.parametrize("stage", [2, 3])
def test_launch_lora(tmp_path, stage):
    out, dumps = _launch(tmp_path, f"distributed.zero_stage={stage}")
    moved = _check_run(out, dumps)
    assert all("lora_" in n for n in moved)  # LoRA: only adapters train
    _check_merged_lora_save(out, dumps)


def test_launch_zero3_full_finetune(tmp_path):
    out, dumps = _launch(tmp_path, "distributed.zero_stage=3", "model.lora=null")
    moved = _check_run(out, dumps)
    assert len(moved) >= 10  # full fine-tuning moves (nearly) every tensor
    # saved through trainer.save_model, which consolidates the ZeRO-3 shards: exactly the gathered weights
    end, saved = dumps["0_end"], _saved(out)
    for name, tensor in end.items():
        if name in saved:
            assert torch.equal(saved[name], tensor), name
    assert {n for n in end if n in saved} >= {n for n in end if n != "lm_head.weight"}
