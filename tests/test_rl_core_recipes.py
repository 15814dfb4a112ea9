"""The advantage-estimator and dynamic-sampling recipes' tiny twins run end to end through the CLI (real TRL
training, tiny model) and log what their method adds."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, key", [
    ("tiny_grpo_rloo", "reward"),
    ("tiny_grpo_remax", "remax/greedy_seconds"),
    ("tiny_grpo_reinforce_pp", "reward"),
    ("tiny_grpo_dynamic_sampling", "dynamic_sampling/kept_fraction"),
    ("tiny_grpo_em_rl", "em_rl/policy_stats_seconds"),
    ("tiny_em_ft", "entropy"),
])
def test_tiny_rl_core_recipe_runs(tmp_path, recipe, key):
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "posttrain", "run", f"recipes/{recipe}.yaml", f"output.dir={out}",
                          "model.threads=1", "output.save_model=false", "output.plots=false"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2]
    assert all(key in r for r in rows if "reward" in r), key
    assert json.loads((out / "summary.json").read_text())["global_step"] == 2
