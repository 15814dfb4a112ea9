"""scripts/compare_dpo.py without training: the KL estimator on the tiny model, the report, the CLI guards."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _script():
    spec = importlib.util.spec_from_file_location("compare_dpo", ROOT / "scripts" / "compare_dpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kl_estimate_is_zero_for_the_reference_and_positive_after_a_change(one_torch_thread):
    import torch

    from posttrain.data import DATASETS
    from posttrain.models import load_model_and_tokenizer

    cd = _script()
    policy, tok = load_model_and_tokenizer("tiny")
    ref, _ = load_model_and_tokenizer("tiny")
    prompts = list(DATASETS.get("tweets")(n=2, split="heldout")["prompt"])
    same = cd.kl_estimate(policy, ref, tok, prompts, max_new_tokens=4, samples=2)
    assert abs(same["kl_seq"]) < 1e-5 and abs(same["kl_seq_mc"]) < 1e-4
    assert len(same["greedy_replies"]) == 2 and same["mean_reply_tokens"] <= 4
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = cd.kl_estimate(policy, ref, tok, prompts, max_new_tokens=4, samples=16, seed=1)
    assert moved["kl_seq"] > 0.05
    # the plain Monte-Carlo log-ratio estimates the same quantity (loose: it is noisy)
    assert abs(moved["kl_seq_mc"] - moved["kl_seq"]) < 5 * moved["kl_seq_mc_se"] + 0.05


def test_report_writes_tables_paper_numbers_and_plot(tmp_path):
    cd = _script()
    kl = {"kl_seq": 1.5, "kl_seq_se": 0.1, "kl_seq_mc": 1.4, "kl_seq_mc_se": 0.3, "kl_per_token": 0.07,
          "greedy_logratio_per_token": 0.2, "greedy_matches_eval": [5, 5]}
    run = {"before": 0.55, "n": 32, "steps": 40, "train_seconds": 1200.0, "wall_seconds": 1400.0, "threads": 1,
           "margin_last": 0.3, "acc_last": 0.7, "kl": kl, "rm_seconds": None, "rm_agrees_with_gold": None,
           "truncated_after": 1.0}
    results = {"dpo": {"high": {0: dict(run, after=0.60, paired={"gain": 0.05, "se": 0.03}),
                                1: dict(run, after=0.64, paired={"gain": 0.09, "se": 0.04})}},
               "madpo": {"high": {0: dict(run, after=0.70, kl=None, rm_seconds=560.0, rm_agrees_with_gold=0.9)}},
               # resumed at step 30: its 400 s cover 10 steps, so s/step is 40, not 10
               "ipo": {"high": {0: dict(run, after=0.5, train_seconds=400.0, steps_timed=10)}}}
    setup = {"recipe": "recipes/dpo.yaml", "model": "m", "steps": 40, "batch": 8, "lr": 5e-5, "beta": 0.1,
             "rm_steps": 40, "eval_tokens": 24, "eval_n": 32, "kl_samples": 2}
    notes = "<!-- notes: written by hand, kept when the script rewrites this file -->\n> DPO wins.\n<!-- end notes -->"
    (tmp_path / "dpo.md").write_text(f"# stale\n\n{notes}\n\nstale table\n")
    cd.report(results, tmp_path / "dpo.md", tmp_path / "dpo.png", command="python scripts/compare_dpo.py",
              tiny=False, setup=setup)
    md = (tmp_path / "dpo.md").read_text()
    assert md.startswith(f"# DPO variants under label noise (issue 6 evidence)\n\n{notes}\n\n") and "stale" not in md
    # eval se column: root mean square of the runs' paired standard errors, sqrt((0.03² + 0.04²) / 2)
    assert "| high (0 %) | dpo | 2 | 0.550 | 0.620 ± 0.028 | +0.070 | 0.035 | 1.500 ± 0.000 | 30.0 |" in md
    assert "| high (0 %) | madpo | 1 | 0.550 | 0.700 ± 0.000 | +0.150 | n/a | n/a |" in md
    assert "| high | dpo | 1 | 40 | 0.550 | 0.640 | +0.090 ± 0.040 |" in md
    assert "| high | madpo | 0 | 40 | 0.550 | 0.700 | n/a | n/a |" in md
    assert "| high (0 %) | ipo | 1 | 0.550 | 0.500 ± 0.000 | -0.050 | n/a | 1.500 ± 0.000 | 40.0 |" in md
    assert "| 400 (last 10 steps: resumed) |" in md and "| 1200 |" in md
    assert "| High | 2.23 | 1.67 | 1.62 | 0.35 |" in md and "| Low | 1.95 | 1.76 | 1.48 | 0.10 |" in md
    assert "not comparable" in md and "Smoke test" not in md
    assert (tmp_path / "dpo.png").stat().st_size > 0
    assert json.dumps(cd.PAPER)  # the paper's table is data, not prose


def test_cli_guards(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "scripts/compare_dpo.py", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    res = run("--tiny", "--out-dir", "docs/results", "--runs-dir", str(tmp_path))
    assert res.returncode == 2 and "refusing to write them into docs/results" in res.stderr
    res = run("--tiny", "--methods", "ipo", "--levels", "low", "--seeds", "0", "--set", "train.bogus=1",
              "--runs-dir", str(tmp_path))
    assert res.returncode == 2 and "ipo/low/seed 0" in res.stderr and "train.bogus" in res.stderr
    assert not any(tmp_path.iterdir())  # validation happens before anything runs
    out = tmp_path / "out"
    out.mkdir()
    (out / "dpo.md").write_text("# old\n<!-- end notes -->\n")
    res = run("--tiny", "--out-dir", str(out), "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 2 and "dpo.md: expected one" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists() and (out / "dpo.md").read_text() == "# old\n<!-- end notes -->\n"


def test_paired_gain_hand_cases():
    cd = _script()
    assert cd.paired_gain([1.0, 0.5], [0.5, 0.5]) == {"gain": 0.25, "se": 0.25, "n": 2}
    nan = float("nan")
    assert cd.paired_gain([1.0, nan, 0.5], [0.5, 0.5, nan]) == {"gain": 0.5, "se": 0.0, "n": 1}
    assert cd.paired_gain([0.3, 0.3], [0.3, 0.3])["se"] == 0.0  # all equal: no spread
    assert cd.paired_gain([], []) == {"gain": None, "se": None, "n": 0}


def test_gold_scores_and_cached_base_replies(tmp_path, one_torch_thread):
    cd = _script()
    recipe = cd.planned_recipe("dpo", True, [])
    recipe["data"]["eval"] = {"name": "tweets", "args": {"n": 2, "split": "heldout"}}
    recipe["eval"]["max_new_tokens"] = 3
    good, empty = cd.gold_scores(recipe, ["I love this, wonderful!", ""])
    assert good > 0.75 and empty == 0.5  # VADER compound rescaled to [0, 1]; an empty reply is neutral
    with pytest.raises(ValueError, match="1 replies for 2 prompts"):
        cd.gold_scores(recipe, ["x"])
    replies = cd.base_greedy(tmp_path, recipe)
    assert len(replies) == 2 and (tmp_path / "base_greedy.json").is_file()
    cached = json.loads((tmp_path / "base_greedy.json").read_text())
    cached["greedy_replies"] = ["from the cache", "2"]
    (tmp_path / "base_greedy.json").write_text(json.dumps(cached))
    assert cd.base_greedy(tmp_path, recipe) == ["from the cache", "2"]
    recipe["eval"]["max_new_tokens"] = 2  # another set-up: regenerated, not the stale cache
    assert cd.base_greedy(tmp_path, recipe) != ["from the cache", "2"]


def test_collect_times_only_the_steps_a_resumed_run_trained(tmp_path):
    cd = _script()
    ev = {"mean_score": 0.5, "n": 4}
    summary = {"eval": {"before": ev, "after": dict(ev, mean_score=0.6)}, "global_step": 40, "train_seconds": 382.4,
               "train_metrics": {"train_runtime": 381.45, "train_steps_per_second": 0.026}}  # madpo-low-s1's numbers
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 40, "loss": 0.6, "rewards/margins": 0.2}) + "\n")
    r = cd.collect(tmp_path)
    assert r["steps_timed"] == 10 and r["steps"] == 40 and r["margin_last"] == 0.2 and r["kl"] is None
    summary["train_metrics"] = {"train_runtime": 1711.0, "train_steps_per_second": 0.023}  # 39.4: rounding, not 39
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert cd.collect(tmp_path)["steps_timed"] == 40
    del summary["train_metrics"]  # an older summary: every step is taken as timed
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert cd.collect(tmp_path)["steps_timed"] == 40


def test_reproduce_command_names_every_non_default_flag_including_where_the_report_goes():
    import argparse

    cd = _script()
    defaults = dict(methods=cd.DEFAULT_METHODS, levels=cd.LEVELS, seeds=[0, 1], steps=None, set=None, tiny=False,
                    kl_samples=2, runs_dir=None, out_dir=None)
    assert cd.reproduce_command(argparse.Namespace(**defaults)) == "python scripts/compare_dpo.py"
    # a report written elsewhere must not advertise a command that would rewrite docs/results/dpo.md
    other = dict(defaults, levels=["high"], seeds=[0, 1, 2], set=["model.threads=1"], out_dir="docs/results/x")
    assert cd.reproduce_command(argparse.Namespace(**other)) == (
        "python scripts/compare_dpo.py --levels high --seeds 0 1 2 --set model.threads=1 --out-dir docs/results/x")
