"""End-to-end: the tiny recipe through the real CLI (real TRL GRPOTrainer, real generation, real rewards)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_tiny_grpo_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    res = _run("run", "recipes/tiny_grpo.yaml", f"output.dir={out}", "model.threads=1")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("reward", "loss", "completions/mean_length", "rewards/math_answer/mean",
                "zero_advantage/skipped_fraction"):
        assert key in steps[0], key
    # the random tiny model earns 0 everywhere: such steps skip the policy pass (same zero gradient); a step that
    # ran it logs the entropy
    for r in steps:
        assert ("entropy" in r) == (r["zero_advantage/skipped_fraction"] < 1.0), r
    summary = json.loads((out / "summary.json").read_text())
    for when in ("before", "after"):
        ev = summary["eval"][when]
        assert ev["n"] == 8 and 0.0 <= ev["accuracy"] <= 1.0 and len(ev["examples"]) == 5
    assert summary["global_step"] == 2
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert (out / "model" / "config.json").exists() and (out / "model" / "model.safetensors").exists()
    resolved = (out / "recipe.resolved.yaml").read_text()
    assert "tiny_grpo" in resolved and "threads: 1" in resolved


def test_eval_before_false_evaluates_after_training_only(tmp_path):
    out = tmp_path / "run"
    res = _run("run", "recipes/tiny_grpo.yaml", f"output.dir={out}", "model.threads=1", "train.max_steps=1",
               "eval.before=false", "output.save_model=false", "output.plots=false")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert "before" not in summary["eval"] and summary["eval"]["after"]["n"] == 8
    assert "eval before" not in res.stdout


def test_tiny_grpo_with_token_weighting(tmp_path):
    out = tmp_path / "run"
    res = _run("run", "recipes/tiny_grpo.yaml", f"output.dir={out}", "model.threads=1", "train.max_steps=1",
               "weighting.tokens=[{name: steer}, {name: high_entropy, top_fraction: 0.5}]", "eval.enabled=false",
               "output.save_model=false", "rewards=[{name: 'tests.faulty_rewards:hashed_text'}]")
    assert res.returncode == 0, res.stderr[-3000:]
    row = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "reward" in line)
    for key in ("weights/mean", "weights/frac_zero", "entropy/p50", "weighting/steer/mean"):
        assert key in row, key
    assert 0.0 < row["weights/frac_zero"] < 1.0


@pytest.mark.parametrize("twin", ["steer", "high_entropy", "clip_cov", "kl_cov", "tw"])
def test_token_weighting_tiny_twins_run(tmp_path, twin):
    out = tmp_path / twin
    # a varied reward: with the strict math reward every advantage of the random tiny model is 0, and such steps
    # skip the policy pass (and so the token strategies) altogether
    res = _run("run", f"recipes/tiny_grpo_{twin}.yaml", f"output.dir={out}", "model.threads=1",
               "eval.enabled=false", "output.save_model=false", "output.plots=false",
               "rewards=[{name: 'tests.faulty_rewards:hashed_text'}]")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train_runtime" not in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] is not None for r in rows)
    assert "reward" in rows[0]  # with num_iterations=2 TRL logs rollout metrics once per generation
    if twin != "kl_cov":  # KL-Cov adds a loss term, no token weights
        assert "weights/mean" in rows[0]
