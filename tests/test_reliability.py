"""Reliability (issue 8): failing rewards, non-finite steps, trustworthy checkpoints and exact resume.

Fast tests exercise SafeReward, the checkpoint helpers and the StepGuard (inside the real TRL training loop on the
tiny model); the `slow` ones drive `posttrain run` end to end, including a real `kill -9` and `--resume`.
"""
import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig

from faulty_rewards import text_hash_score
from posttrain.data import arithmetic_problems
from posttrain.models import load_tiny_model
from posttrain.rewards.base import completion_text
from posttrain.rewards.safe import SafeReward
from posttrain.trainers import PosttrainGRPOTrainer
from posttrain.trainers.checkpointing import (COMPLETE_MARKER, latest_complete_checkpoint, quarantine_incomplete,
                                              rotate_complete)
from posttrain.trainers.guards import StepGuard

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- SafeReward
def _echo_len(prompts=None, completions=None, **kw):
    return [float(len(c)) for c in completions]


def test_safe_reward_passes_good_values_and_intentional_none():
    def fn(completions=None, **kw):
        return [1, None, 2.5]

    r = SafeReward(fn)
    assert r(prompts=["a", "b", "c"], completions=["x", "y", "z"]) == [1.0, None, 2.5]
    assert r.last_failed == [False, False, False]  # None on purpose = TRL's "not applicable", not a failure
    assert r.__name__ == "fn"


def test_safe_reward_exception_isolated_to_the_bad_sample():
    calls = []

    def fn(completions=None, tag=None, **kw):
        calls.append(list(completions))
        if "bad" in completions:
            raise RuntimeError("boom")
        return [float(len(c)) for c in completions]

    r = SafeReward(fn)
    out = r(prompts=["p"] * 3, completions=["aa", "bad", "c"], tag=["t1", "t2", "t3"])
    assert out == [2.0, None, 1.0]
    assert r.last_failed == [False, True, False]
    assert r.last_reasons == {"RuntimeError": 1}
    assert calls == [["aa", "bad", "c"], ["aa"], ["bad"], ["c"]]  # one batch call, then one call per sample


def test_safe_reward_exception_without_isolation_fails_the_whole_call():
    def fn(completions=None, **kw):
        raise ValueError("nope")

    r = SafeReward(fn, isolate=False)
    assert r(completions=["a", "b"]) == [None, None]
    assert r.last_failed == [True, True] and r.total_failed == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "3.x", object()])
def test_safe_reward_non_finite_or_non_numeric_values_are_missing(bad):
    r = SafeReward(lambda completions=None, **kw: [1.0, bad])
    assert r(completions=["a", "b"]) == [1.0, None]
    assert r.last_failed == [False, True]


@pytest.mark.parametrize("ret", [[1.0], [1.0, 2.0, 3.0], None, 5.0])
def test_safe_reward_wrong_length_or_type_fails_every_sample(ret):
    r = SafeReward(lambda completions=None, **kw: ret)
    assert r(completions=["a", "b"]) == [None, None]
    assert r.last_failed == [True, True]


def test_safe_reward_timeout_returns_quickly_and_marks_the_call_failed():
    def slow(completions=None, **kw):
        time.sleep(5)
        return [1.0] * len(completions)

    r = SafeReward(slow, timeout=0.2)
    t0 = time.perf_counter()
    assert r(completions=["a", "b"]) == [None, None]
    assert time.perf_counter() - t0 < 2.0
    assert r.last_reasons == {"timeout (no answer within 0.2 s)": 2}


def test_safe_reward_no_timeout_runs_in_the_callers_thread():
    import threading

    seen = []
    r = SafeReward(lambda completions=None, **kw: seen.append(threading.current_thread()) or [0.0], timeout=None)
    r(completions=["a"])
    assert seen == [threading.current_thread()]


@pytest.mark.parametrize("timeout", [0, -1, "10"])
def test_safe_reward_rejects_bad_timeout(timeout):
    with pytest.raises(ValueError, match="timeout"):
        SafeReward(_echo_len, timeout=timeout)


def test_safe_reward_forwards_attributes_of_the_wrapped_reward():
    from posttrain.rewards import build_reward

    inner = build_reward("terminated", {"eos_token_id": 7})
    r = SafeReward(inner)
    assert r.eos_token_ids == (7,) and r.__name__ == inner.__name__
    assert r(completions=["a", "b"], completion_ids=[[1, 7], [1, 2]]) == [1.0, 0.0]


# ----------------------------------------------------------------------------------------- checkpoint helpers
def _ckpt(root: Path, step: int, complete: bool) -> Path:
    p = root / f"checkpoint-{step}"
    p.mkdir(parents=True)
    (p / "model.safetensors").write_text("x")
    if complete:
        (p / COMPLETE_MARKER).write_text("{}")
    return p


def test_latest_complete_checkpoint_skips_half_written_ones(tmp_path):
    assert latest_complete_checkpoint(tmp_path / "missing") is None
    _ckpt(tmp_path, 2, True)
    _ckpt(tmp_path, 10, True)  # numeric, not lexical order: 10 > 9
    _ckpt(tmp_path, 9, True)
    _ckpt(tmp_path, 12, False)
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-10"


def test_quarantine_renames_and_never_deletes(tmp_path):
    _ckpt(tmp_path, 2, True)
    _ckpt(tmp_path, 4, False)
    (tmp_path / "incomplete-checkpoint-4").mkdir()  # an earlier quarantine with the same name
    moved = quarantine_incomplete(tmp_path)
    assert len(moved) == 1 and moved[0].name.startswith("incomplete-checkpoint-4-")
    assert (moved[0] / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def test_rotation_counts_only_complete_checkpoints(tmp_path):
    for s in (1, 2, 3):
        _ckpt(tmp_path, s, True)
    _ckpt(tmp_path, 4, False)
    rotate_complete(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    rotate_complete(tmp_path, 1, keep=tmp_path / "checkpoint-2")  # the best checkpoint is never rotated away
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    rotate_complete(tmp_path, None)
    rotate_complete(tmp_path, 0)
    assert len(list(tmp_path.glob("checkpoint-*"))) == 3


# ------------------------------------------------------------------------------ StepGuard in the real loop
def _hash_reward(completions, **kw):
    return text_hash_score([completion_text(c) for c in completions])


class _NaNAtSteps(PosttrainGRPOTrainer):
    """Fault injection: the loss of the listed (1-based) optimizer steps is NaN, as after a numerical blow-up."""

    nan_steps: set = set()

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        return loss * float("nan") if self.state.global_step + 1 in self.nan_steps else loss


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _guarded_trainer(tiny, tmp_path, nan_steps, max_steps, **kw):
    model, tok = tiny
    args = GRPOConfig(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=4, use_cpu=True, bf16=False, report_to="none", max_steps=max_steps,
                      gradient_checkpointing=False, learning_rate=1e-2, save_strategy="no", disable_tqdm=True,
                      logging_steps=1, seed=0)
    tr = _NaNAtSteps(model=copy.deepcopy(model), reward_funcs=[_hash_reward], args=args,
                     train_dataset=arithmetic_problems(32, low=1, high=9), processing_class=tok,
                     diagnostics_dir=tmp_path / "diagnostics", **kw)
    tr.nan_steps = set(nan_steps)
    return tr


class _Snapshots:
    def __init__(self, trainer):
        self.by_step = {}
        trainer.add_callback(self)

    def __getattr__(self, name):  # a minimal TrainerCallback: only on_step_end does something
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        self.by_step[state.global_step] = {
            "params": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            "adam_steps": sorted({int(s["step"]) for s in optimizer.state.values()}) if optimizer.state else [],
        }


def test_nonfinite_loss_skips_exactly_those_steps(tiny, tmp_path):
    tr = _guarded_trainer(tiny, tmp_path, nan_steps={2, 3}, max_steps=4, max_nonfinite_steps=3)
    snaps = _Snapshots(tr)
    tr.train()
    p = {s: snaps.by_step[s]["params"] for s in (1, 2, 3, 4)}
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(p[1], p[2]) and same(p[2], p[3])      # skipped: weights untouched
    assert not same(p[3], p[4])                       # the next good step updates again
    assert snaps.by_step[3]["adam_steps"] == [1]      # Adam moments/step count untouched by the skips
    assert snaps.by_step[4]["adam_steps"] == [2]
    assert tr.guard.skipped_total == 2 and tr.guard.consecutive == 0 and tr.guard.stop_reason is None
    logged = [h["reliability/skipped_steps"] for h in tr.state.log_history if "reliability/skipped_steps" in h]
    assert logged == [0, 1, 2, 2]


def test_consecutive_nonfinite_steps_stop_with_diagnostics_and_checkpoint(tiny, tmp_path):
    tr = _guarded_trainer(tiny, tmp_path, nan_steps={2, 3, 4, 5, 6}, max_steps=8, max_nonfinite_steps=3)
    tr.train()
    assert tr.state.global_step == 4  # steps 2, 3, 4 skipped -> stop after step 4
    assert "3 consecutive steps" in tr.guard.stop_reason
    diag = json.loads((tmp_path / "diagnostics" / "nonfinite-step4.json").read_text())
    assert diag["nonfinite_loss"] is True and diag["consecutive_skips"] == 3
    assert all(x == "nan" for x in diag["micro_batch_losses"])
    ckpt = latest_complete_checkpoint(tmp_path / "trainer")
    assert ckpt is not None and ckpt.name == "checkpoint-4"


def test_step_guard_rejects_bad_limit():
    with pytest.raises(ValueError, match="max_consecutive"):
        StepGuard(0)


# ------------------------------------------------------------------------------------ end to end (CLI)
def _run(*args, env=None, timeout=600):
    import os

    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _recipe(tmp_path, reward: str, **train) -> Path:
    train = {"max_steps": 4, "save_steps": 1, **train}
    p = tmp_path / "recipe.yaml"
    p.write_text(
        f"extends: {ROOT / 'recipes' / 'tiny_grpo.yaml'}\n"
        "model: {threads: 1}\n"
        f"train: {json.dumps(train)}\n"
        "eval: {enabled: false}\n"
        "output: {plots: false}\n"
        f"rewards:\n  - {reward}\n"
    )
    return p


def _params(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def _last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_kill_9_and_resume_reproduces_the_straight_run_exactly(tmp_path):
    """6 steps straight vs: `kill -9` during step 5 (checkpoint-4 then made half-written), resume from
    checkpoint-3 — the middle of a num_iterations=2 rollout buffer — to step 6.  Identical weights, metrics and
    strategy state (a Lagrangian objective strategy over two rewards: multipliers and weights).
    Negative control: without posttrain's own checkpoint state the resumed run differs."""
    recipe = _recipe(tmp_path, '{name: "tests.faulty_rewards:kill_at_step", args: {step: 4}}\n'
                               '  - {name: "tests.faulty_rewards:flaky", args: {mode: nan, fraction: 0.0, name: b}}\n'
                               'weighting: {objectives: {name: lagrangian, thresholds: [null, 0.9]}}',
                     max_steps=6, num_iterations=2)
    straight, crashed, no_state = tmp_path / "straight", tmp_path / "crashed", tmp_path / "no_state"
    assert _run("run", str(recipe), f"output.dir={straight}").returncode == 0
    res = _run("run", str(recipe), f"output.dir={crashed}", env={"POSTTRAIN_TEST_KILL": "1"})
    assert res.returncode == -9, res.stderr[-2000:]
    assert not (crashed / "summary.json").exists()
    (crashed / "trainer" / "checkpoint-4" / COMPLETE_MARKER).unlink()  # as if killed while writing it
    import shutil

    shutil.copytree(crashed, no_state)
    (no_state / "trainer" / "checkpoint-3" / "posttrain_state.pt").unlink()
    for run in (crashed, no_state):
        res = _run("run", str(recipe), f"output.dir={run}", "--resume")
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"resuming from {run / 'trainer' / 'checkpoint-3'}" in res.stdout
    assert (crashed / "trainer" / "incomplete-checkpoint-4" / "optimizer.pt").exists()  # set aside, not deleted
    a, b, c = _params(straight), _params(crashed), _params(no_state)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-6  # the control: buffer/step state matters
    rows = lambda r: [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [(x["step"], x.get("loss")) for x in rows(straight)] == [(x["step"], x.get("loss")) for x in rows(crashed)]
    # identical strategy / generator / buffer state in the final checkpoints
    final = lambda r: torch.load(r / "trainer" / "checkpoint-6" / "posttrain_state.pt", weights_only=True)  # noqa
    _assert_same_state(final(straight), final(crashed))
    lagrangian = final(crashed)["strategies"]["0:objective:lagrangian"]["objective"]
    assert lagrangian["strategy"] == "lagrangian" and lagrangian["state"], lagrangian
    init = _initial_tiny()
    assert max((a[k] - init[k]).abs().max().item() for k in a if k in init) > 1e-4  # training really moved them


def _assert_same_state(a, b, path="state"):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-6, rtol=0, equal_nan=True), path
    else:
        assert a == b, path


def _initial_tiny():
    model, _ = load_tiny_model()
    return {k: v for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_failing_reward_samples_are_left_out_and_training_goes_on(tmp_path):
    """Four rewards failing in four ways (exception, NaN, a string, a short list) in one run: training finishes,
    every failure is counted under its reward's name."""
    modes = ["raise", "nan", "string", "wrong_length"]
    rewards = "\n  - ".join(f'{{name: "tests.faulty_rewards:flaky", args: {{mode: {m}, fraction: 0.3, '
                            f'name: {m}}}}}' for m in modes)
    out = tmp_path / "run"
    res = _run("run", str(_recipe(tmp_path, rewards, max_steps=2)), f"output.dir={out}",
               "reliability.max_reward_failure_fraction=1.0")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"reward"' in x]
    assert len(rows) == 2
    for m in modes:
        assert max(r[f"reward_failures/{m}"] for r in rows) > 0, m
    assert any(r["reward_failures/missing_fraction"] > 0 for r in rows)
    assert json.loads((out / "summary.json").read_text())["global_step"] == 2


@pytest.mark.slow
def test_too_many_reward_failures_stop_with_a_checkpoint(tmp_path):
    recipe = _recipe(tmp_path, '{name: "tests.faulty_rewards:flaky", args: {mode: raise, fraction: 1.0}}')
    out = tmp_path / "run"
    res = _run("run", str(recipe), f"output.dir={out}")
    assert res.returncode == 3, res.stderr[-2000:]
    line = _last_line(res.stderr)
    assert line.startswith("posttrain: stopped: 100% of the samples of step 1 have a failed reward")
    assert "reliability.max_reward_failure_fraction=0.5" in line and "Traceback" not in res.stderr
    assert (out / "trainer" / "checkpoint-1" / COMPLETE_MARKER).exists()
    assert "stopped" in json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_reward_timeout_counts_as_failure(tmp_path):
    recipe = _recipe(tmp_path, '{name: "tests.faulty_rewards:flaky", args: {mode: sleep, fraction: 1.0}, '
                               'timeout: 0.5}', max_steps=1)
    res = _run("run", str(recipe), f"output.dir={tmp_path / 'run'}")
    assert res.returncode == 3 and "timeout" in _last_line(res.stderr), res.stderr[-2000:]


@pytest.mark.slow
def test_diverged_weights_stop_with_diagnostics_not_a_traceback(tmp_path):
    recipe = _recipe(tmp_path, '{name: "tests.faulty_rewards:kill_at_step"}', learning_rate="1e38")
    out = tmp_path / "run"
    res = _run("run", str(recipe), f"output.dir={out}")
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "became non-finite" in _last_line(res.stderr)
    assert list((out / "diagnostics").glob("nonfinite-step*.json"))
