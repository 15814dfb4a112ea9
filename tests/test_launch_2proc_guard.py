"""``posttrain launch --nproc 2`` when one process alone meets trouble: a NaN loss on rank 1 only (fault injection,
``POSTTRAIN_DEBUG_NAN_LOSS``) and a user token strategy that raises on rank 1 only.

Every process must skip, or stop at, the same step: a decision taken on one rank alone leaves the other in a
collective it never joins (the launch then times out) or fills DeepSpeed's gradient buckets in another order; and
under ZeRO-3 the exact zero that replaces a NaN loss must reach the partitioned gradients (the sum of the
parameters times 0 crashed there: an un-gathered shard cannot take a full-size gradient).
"""
import json

import pytest
import torch
from launch_helpers import launch_two

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
REWARD = "rewards=[{name: 'mp_reward:token_parity'}]"


@pytest.mark.parametrize("stage", [2, 3])
def test_a_nan_loss_on_one_process_skips_that_step_on_every_process(tmp_path, stage):
    out, dumps = launch_two(tmp_path, "recipes/tiny_grpo.yaml", REWARD, f"distributed.zero_stage={stage}",
                            "train.max_steps=3", "output.save_model=false", with_parity_reward=True,
                            env={"POSTTRAIN_DEBUG_NAN_LOSS": "1:2"})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["reliability/skipped_steps"] for r in rows if "reliability/skipped_steps" in r]
    assert skipped == [0, 1, 1]  # step 2 counted as skipped (rank 0 logs; its own loss was finite)
    assert json.loads((out / "summary.json").read_text())["global_step"] == 3
    end0, end1 = dumps["0_end"], dumps["1_end"]
    for name in end0:
        assert torch.equal(end0[name], end1[name]), f"ranks end with different {name}"
        assert torch.isfinite(end0[name]).all(), f"NaN reached {name}"
    assert any(not torch.equal(end0[n], dumps["0_begin"][n]) for n in end0), "training did not change any weight"


def test_a_strategy_failing_on_one_process_stops_every_process_at_that_step(tmp_path):
    out, _ = launch_two(tmp_path, "recipes/tiny_grpo.yaml", REWARD, "distributed.zero_stage=3", "train.max_steps=3",
                        "output.save_model=false", "train.save_steps=1",
                        "weighting.tokens=[{name: 'tests.user_strategies.grpo_kinds:ExplodesOnRankOne'}]",
                        with_parity_reward=True, returncode=3)
    stopped = [line for line in (out / "stderr.txt").read_text().splitlines() if line.startswith("posttrain: stopped:")]
    assert stopped and all("boom on rank 1 only" in line for line in stopped), stopped
    assert any("(on another process)" in line for line in stopped), stopped  # rank 0 names where it happened
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 1 and summary["checkpoint"], summary


def test_zero3_skips_micro_batches_without_gradient(tmp_path):
    """The tiny model never writes a correct answer: every advantage is 0, so every micro-batch is skipped (no policy
    forward). Under ZeRO-3 the exact zero that stands in must still fill the partitioned gradients."""
    out, dumps = launch_two(tmp_path, "recipes/tiny_grpo.yaml", "distributed.zero_stage=3", "output.save_model=false")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "zero_advantage/skipped_fraction" in r]
    assert [r["zero_advantage/skipped_fraction"] for r in steps] == [1.0, 1.0]
    for name, tensor in dumps["0_end"].items():  # Adam on zero gradients from the start: no move at all
        assert torch.equal(tensor, dumps["0_begin"][name]) and torch.equal(tensor, dumps["1_end"][name]), name
