"""End-to-end DPO through the real CLI: TRL's DPOTrainer (and RewardTrainer for MADPO's stage 1) on the tiny twin
of the offline preference data, evaluation with the VADER reward, every output written."""
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


def _rows(out):
    return [r for r in (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
            if "train_runtime" not in r]


def test_tiny_dpo_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    res = _run("run", "recipes/tiny_dpo_beta.yaml", f"output.dir={out}", "model.threads=1")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "rewards/margins", "logps/chosen", "pairs/beta", "pairs/kept_fraction", "pairs/weight_mean"):
        assert key in rows[0], key
    assert rows[0]["pairs/kept_fraction"] == 0.75  # rho 0.25 of 4 pairs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "dpo" and summary["global_step"] == 2
    for when in ("before", "after"):
        assert summary["eval"][when]["n"] == 4 and 0.0 <= summary["eval"][when]["mean_score"] <= 1.0
    assert (out / "model" / "model.safetensors").exists() and (out / "training_curves.png").exists()


def test_tiny_madpo_runs_both_stages(tmp_path):
    out = tmp_path / "madpo"
    res = _run("run", "recipes/tiny_dpo_madpo.yaml", f"output.dir={out}", "model.threads=1", "eval.enabled=false",
               "output.save_model=false")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rm = summary["reward_model"]
    assert rm["source"] == "train" and rm["global_step"] == 2 and rm["n"] > 0
    margins = json.loads((out / "reward_model" / "margins.json").read_text())["margins"]
    assert len(margins) == rm["n"] and len(set(margins)) > 1  # a trained RM scores pairs differently
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert "pairs/margin_mean" in rows[0] and rows[0]["pairs/weight_min"] != rows[0]["pairs/weight_max"]
    assert (out / "margins.png").is_file() and (out / "training_curves.png").is_file()  # margin histogram


def test_dpo_bad_input_is_one_line(tmp_path):
    res = _run("run", "recipes/tiny_dpo.yaml", f"output.dir={tmp_path / 'x'}", "data.train.name=tweets",
               "data.train.args={n: 4}", "model.threads=1")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("posttrain: error: data.train: DPO needs preference pairs")
