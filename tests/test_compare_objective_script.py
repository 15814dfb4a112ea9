"""scripts/compare_objective_weighting.py without training: weight trajectories from metrics.jsonl and the report."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["correct", "format"]


def _script():
    spec = importlib.util.spec_from_file_location("compare_objective_weighting",
                                                  ROOT / "scripts" / "compare_objective_weighting.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _metrics(run_dir: Path, weights):
    run_dir.mkdir(parents=True)
    rows = [{"step": i + 1, "loss": 0.1, **{f"reward_weights/{n}": w[k] for k, n in enumerate(NAMES)}}
            for i, w in enumerate(weights)]
    rows.insert(1, {"step": 1, "eval_only": 1.0})  # rows without the weights are skipped
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_weight_trajectory_and_report(tmp_path):
    cmp = _script()
    runs = tmp_path / "runs"
    _metrics(cmp.run_dir(runs, "fixed:1,1", 0), [[0.5, 0.5]] * 3)
    _metrics(cmp.run_dir(runs, "gradient", 0), [[0.5, 0.5], [0.6, 0.4], [0.7, 0.3]])
    assert cmp.run_dir(runs, "fixed:1,1", 0).name == "fixed-1_1-s0"
    traj = cmp.weight_trajectory(cmp.run_dir(runs, "gradient", 0), NAMES)
    assert traj == [(1, [0.5, 0.5]), (2, [0.6, 0.4]), (3, [0.7, 0.3])]
    assert cmp.weight_trajectory(tmp_path / "missing", NAMES) == []

    results = {"fixed:1,1": {0: {"scores": {"correct": 0.6, "format": 1.0}}},
               "gradient": {0: {"scores": {"correct": 0.5, "format": 0.9}}}}
    trajectories = {c: {0: cmp.weight_trajectory(cmp.run_dir(runs, c, 0), NAMES)} for c in results}
    base = {"scores": {"correct": 0.4, "format": 0.7}, "n": 10}
    out = tmp_path / "out"
    out.mkdir()
    cmp.report(results, base, NAMES, out / "r.md", out / "r.png", out / "r.json", "settings", trajectories)
    md = (out / "r.md").read_text()
    # hand-computed: HV of one point w.r.t. the origin is the product; (0.5, 0.9) is dominated by (0.6, 1.0)
    assert "| base model | 0.400 | 0.700 | 0.2800 | |" in md
    assert "| fixed:1,1 | 0.600 ± 0.000 | 1.000 ± 0.000 | 0.6000 | yes |" in md
    assert "| gradient | 0.500 ± 0.000 | 0.900 ± 0.000 | 0.4500 | no |" in md
    assert "| gradient | 0 | [0.500, 0.500] | [0.700, 0.300] (step 3) |" in md
    # only strategies whose weights moved get a trajectory plot
    assert (out / "r_weights.png").is_file() and "r_weights.png" in md
    assert (out / "r.png").is_file() and json.loads((out / "r.json").read_text())["objectives"] == NAMES
