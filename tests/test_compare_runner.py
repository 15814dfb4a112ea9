"""posttrain.compare runner + report with a fake `posttrain run` (no training): reuse, resume, a failing arm,
per-item bootstrap, wording, notes block, report-only."""
import json
import sys
import textwrap
from pathlib import Path

import pytest

from posttrain.compare import compare, make_plan, report, runner
from posttrain.reporting import NOTES_BEGIN, NOTES_END

SPEC = """
name: fake
baseline: plain
seeds: [0, 1, 2]
arms:
  - {name: plain, recipe: tiny_grpo}
  - {name: steer, recipe: tiny_grpo_steer}
  - {name: broken, recipe: tiny_grpo, overrides: [train.learning_rate=0.002]}
common_overrides: [train.max_steps=2]
threads: 1
jobs: 2
bootstrap_resamples: 500
"""

# A stand-in for `posttrain run`: writes what a finished run writes. plain: item i correct iff (i + seed) % 4 == 0
# (accuracy 0.25); steer: also when it is 1 (0.5) -> paired per-item difference +0.25 on every seed; broken fails.
FAKE = r"""
import json, pathlib, sys, yaml
out, resolved, arm, seed, resume = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
out.mkdir(parents=True, exist_ok=True)
(out / "recipe.resolved.yaml").write_text("# fake\n" + yaml.safe_dump(resolved))
if resume == "1":
    (out / "resumed.txt").write_text("yes")
if arm == "broken":
    sys.stderr.write("train:  50%|#####     | 1/2 [00:01<00:01, 1.00it/s]\rTraceback (most recent call last):\n")
    sys.stderr.write("posttrain: error: boom in the reward\n")
    sys.exit(2)
good = (0,) if arm == "plain" else (0, 1)
correct = [(i + seed) % 4 in good for i in range(20)]
with open(out / "eval_items.jsonl", "w") as f:
    for i, c in enumerate(correct):
        f.write(json.dumps({"id": f"item{i}", "score": float(c), "correct": c}) + "\n")
acc = sum(correct) / 20
with open(out / "metrics.jsonl", "w") as f:
    for step in range(1, 6):
        f.write(json.dumps({"step": step, "entropy": (1.0 if arm == "plain" else 2.0) * step}) + "\n")
    f.write(json.dumps({"step": 5, "train_runtime": 1.0}) + "\n")
summary = {"eval": {"before": {"accuracy": 0.1, "mean_score": 0.1, "n": 20, "truncated_fraction": 0.0},
                    "after": {"accuracy": acc, "mean_score": acc, "n": 20, "truncated_fraction": 0.0}},
           "train_seconds": 2.5, "global_step": 5}
(out / "summary.json").write_text(json.dumps(summary))
"""


def fake_cmd(run, resume):
    return [sys.executable, "-c", FAKE, str(run.out), json.dumps(run.resolved), run.arm, str(run.seed),
            "1" if resume else "0"]


@pytest.fixture()
def spec_path(tmp_path):
    p = tmp_path / "fake.yaml"
    p.write_text(textwrap.dedent(SPEC))
    return p


def _report(plan):
    collected = [report.collect_run(plan, r) for r in plan.runs]
    a = report.analyse(plan, collected)
    a["paths"] = report.write_outputs(plan, a)
    return a


def test_last_error_line():
    assert runner.last_error_line("x\n 10%|##  | 1/10 [00:01<00:09, 1.0it/s]\rposttrain: error: bad key\n") == \
        "posttrain: error: bad key"
    assert runner.last_error_line("Traceback (most recent call last):\n  File x\nValueError: nope\n") == \
        "ValueError: nope"
    assert runner.last_error_line("") == ""


def test_runs_reuse_resume_failure_and_report(spec_path, tmp_path):
    runs_dir = tmp_path / "runs"
    plan = make_plan(spec_path, runs_dir=runs_dir)
    # plain-s0 was interrupted: same recipe, a complete checkpoint, no summary -> resumed with --resume
    p0 = next(r for r in plan.runs if r.id == "plain-s0")
    p0.out.mkdir(parents=True)
    import yaml

    (p0.out / "recipe.resolved.yaml").write_text(yaml.safe_dump(p0.resolved))
    ck = p0.out / "trainer" / "checkpoint-1"
    ck.mkdir(parents=True)
    (ck / "posttrain_complete.json").write_text("{}")
    assert runner.run_state(p0) == "partial"

    runner.execute(plan, progress=False, train_cmd=fake_cmd)
    status = {r.id: r.status for r in plan.runs}
    assert status == {"plain-s0": "ok", "plain-s1": "ok", "plain-s2": "ok", "steer-s0": "ok", "steer-s1": "ok",
                      "steer-s2": "ok", "broken-s0": "failed", "broken-s1": "failed", "broken-s2": "failed"}
    assert (p0.out / "resumed.txt").is_file() and p0.info["resumed"] is True
    b0 = json.loads((runs_dir / "broken-s0" / runner.STATUS_FILE).read_text())
    assert b0["status"] == "failed" and b0["error"] == "posttrain: error: boom in the reward" and b0["returncode"] == 2
    assert b0["peak_rss_mb"] > 0 and (runs_dir / "logs" / "broken-s0.err").is_file()

    a = _report(plan)
    d = a["differences"]["steer"]["accuracy"]
    assert d["method"] == "paired bootstrap over seeds and held-out items" and d["n_items"] == 20
    # per item the difference is 1 on 5 of 20 items, 0 on the rest: the item bootstrap has width, above 0
    assert d["diff"] == pytest.approx(0.25) and 0.0 < d["lo"] < 0.25 < d["hi"]
    assert d["reading"].startswith("higher than the baseline by 0.250")
    t = d["paired_t"]  # per seed the difference is exactly 0.25: a zero-width t interval
    assert t["diff"] == pytest.approx(0.25) and t["lo"] == pytest.approx(0.25) and t["se"] == pytest.approx(0)
    # entropy: plain y = step, steer y = 2 step over steps 1..5: tail (last point) 5 vs 10, AUC 12 vs 24
    arms = a["arms"]
    assert arms["plain"]["metrics"]["entropy_tail_mean"]["mean"] == pytest.approx(5.0)
    assert arms["steer"]["metrics"]["entropy_auc"]["mean"] == pytest.approx(24.0)
    e = a["differences"]["steer"]["entropy_auc"]
    assert e["method"] == "paired t over seeds" and e["diff"] == pytest.approx(12.0)
    assert arms["plain"]["cost"]["s_per_step"] == pytest.approx(0.5)
    assert arms["broken"]["runs_ok"] == 0 and "accuracy" not in a["differences"]["broken"]

    md = Path(a["paths"]["markdown"]).read_text()
    assert "| broken | 0/3 | **failed**: posttrain: error: boom in the reward |" in md
    assert "`steer` − `plain`: higher than the baseline by 0.250" in md
    assert "`broken` − `plain`: n/a (no paired finished runs)" in md
    assert "| broken-s1 | failed |" in md and "resumed" in md
    assert Path(a["paths"]["png"]).stat().st_size > 1000
    js = json.loads(Path(a["paths"]["json"]).read_text())
    assert js["differences"]["steer"]["accuracy"]["diff"] == pytest.approx(0.25)

    # second call: finished runs are reused (not run again), the failed ones are tried again
    plan2 = make_plan(spec_path, runs_dir=runs_dir)
    runner.execute(plan2, progress=False, train_cmd=fake_cmd)
    assert {r.id: r.status for r in plan2.runs if r.arm != "broken"} == {
        f"{arm}-s{s}": "reused" for arm in ("plain", "steer") for s in (0, 1, 2)}
    assert all(r.status == "failed" for r in plan2.runs if r.arm == "broken")
    assert plan2.runs[0].info.get("peak_rss_mb")  # kept from the run that trained it

    # a changed recipe is not reused
    plan3 = make_plan(spec_path, runs_dir=runs_dir)
    plan3.runs[0].key = "other"
    assert runner.run_state(plan3.runs[0]) == "stale"

    # report only, with a hand-written notes block in the report: kept, nothing runs
    mdp = Path(a["paths"]["markdown"])
    lines = mdp.read_text().splitlines()
    mdp.write_text("\n".join([lines[0], "", NOTES_BEGIN, "my reading", NOTES_END] + lines[1:]))
    res = compare(spec_path, runs_dir=runs_dir, report_only=True, progress=False)
    assert "my reading" in mdp.read_text()
    assert sorted(res["failed"]) == ["broken-s0", "broken-s1", "broken-s2"]
    assert res["differences"]["steer"]["accuracy"]["diff"] == pytest.approx(0.25)


def test_report_only_with_nothing_run_and_a_broken_notes_block(spec_path, tmp_path):
    res = compare(spec_path, runs_dir=tmp_path / "r", report_only=True, progress=False)
    assert len(res["failed"]) == 9 and all(r["status"] == "missing" for r in res["runs"])
    md = Path(res["paths"]["markdown"])
    md.write_text("# x\n" + NOTES_BEGIN + "\n")  # unbalanced markers: refused before anything runs
    from posttrain.compare import CompareError

    with pytest.raises(CompareError, match="notes"):
        compare(spec_path, runs_dir=tmp_path / "r", report_only=True, progress=False)


def test_ci_containing_zero_is_worded_as_no_detectable_difference(spec_path, tmp_path):
    plan = make_plan(spec_path, runs_dir=tmp_path / "runs")
    for r in plan.runs:  # per-seed values only (no items): paired t; steer - plain = +0.1, -0.1, +0.05
        r.status = "ok"
        r.out.mkdir(parents=True)
        acc = {"plain": 0.5, "steer": 0.5 + (0.1, -0.1, 0.05)[r.seed], "broken": 0.4}[r.arm]
        (r.out / "summary.json").write_text(json.dumps(
            {"eval": {"after": {"accuracy": acc, "mean_score": acc, "n": 20, "truncated_fraction": 0.0}},
             "train_seconds": 1.0, "global_step": 2}))
    a = _report(plan)
    d = a["differences"]["steer"]["accuracy"]
    assert d["method"] == "paired t over seeds" and d["lo"] < 0 < d["hi"]
    assert d["reading"] == f"no detectable difference (MDE {d['mde']:.3f})"
    # d = [0.1, -0.1, 0.05]: sd = sqrt(((0.0833)^2 + (0.1167)^2 + (0.0333)^2) / 2)
    import statistics

    sd = statistics.stdev([0.1, -0.1, 0.05])
    assert d["mde"] == pytest.approx(2.801585 * sd / 3 ** 0.5, rel=1e-5)
    b = a["differences"]["broken"]["accuracy"]
    assert b["reading"].startswith("lower than the baseline by 0.100")


def test_bootstrap_that_excludes_0_while_the_t_over_seeds_does_not_is_inconclusive(spec_path, tmp_path):
    """Per-item scores constant within a run: the bootstrap's item level adds no noise and every resample of the
    3 seeds keeps a positive mean (min 0.01), while the t over the seed differences (+0.01, +0.01, +0.3:
    mean 0.107, half-width t(0.975, 2) * sd / sqrt 3 = 0.415) contains 0."""
    plan = make_plan(spec_path, runs_dir=tmp_path / "runs")
    for r in plan.runs:
        r.status = "ok"
        r.out.mkdir(parents=True)
        acc = {"plain": 0.5, "steer": 0.5 + (0.01, 0.01, 0.3)[r.seed], "broken": 0.4}[r.arm]
        (r.out / "summary.json").write_text(json.dumps(
            {"eval": {"after": {"accuracy": acc, "mean_score": acc, "n": 20, "truncated_fraction": 0.0,
                                "item_scores": [acc] * 20}}, "train_seconds": 1.0, "global_step": 2}))
    d = _report(plan)["differences"]["steer"]["mean_score"]
    assert d["method"].startswith("paired bootstrap") and d["lo"] == pytest.approx(0.01) and d["hi"] > 0.2
    assert d["paired_t"]["lo"] < 0 < d["paired_t"]["hi"]
    assert d["reading"].startswith("inconclusive: +0.107, bootstrap [0.010, ")
    assert d["reading"].endswith(f"does not (MDE {d['mde']:.3f})")
    # every seed lower by the same 0.1: both intervals exclude 0 -> "lower"
    assert _report(plan)["differences"]["broken"]["mean_score"]["reading"].startswith("lower than the baseline by 0.100")


PASSK = r"""
import json, pathlib, sys
out, seed, arm = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
assert (out / "model").is_dir()
correct = [2 if (i + seed) % 2 == 0 or arm == "steer" else 0 for i in range(20)]  # of 2 samples per item
(out / "pass_at_k.json").write_text(json.dumps({"k": 2, "samples": 2, "temperature": 1.0, "correct": correct,
                                                "ids": [f"item{i}" for i in range(20)]}))
"""


def test_pass_at_k_step_and_model_clean_up(tmp_path):
    p = tmp_path / "pk.yaml"
    p.write_text(textwrap.dedent(SPEC).replace("  - {name: broken, recipe: tiny_grpo, overrides: "
                                                "[train.learning_rate=0.002]}\n", "")
                 + "pass_at_k: {k: 2, temperature: 1.0}\n")
    plan = make_plan(p, runs_dir=tmp_path / "runs")
    assert all("output.save_model=true" in r.overrides for r in plan.runs)

    def train(run, resume):
        (run.out / "model").mkdir(parents=True, exist_ok=True)
        return fake_cmd(run, resume)

    def passk(plan, run):
        return [sys.executable, "-c", PASSK, str(run.out), str(run.seed), run.arm]

    runner.execute(plan, progress=False, train_cmd=train, passk_cmd=passk)
    assert {r.status for r in plan.runs} == {"ok"}
    assert not any((r.out / "model").exists() for r in plan.runs)  # deleted once pass@k is computed
    a = _report(plan)
    d = a["differences"]["steer"]["pass@2"]
    assert d["method"] == "paired bootstrap over seeds and held-out items"
    assert a["arms"]["plain"]["metrics"]["pass@2"]["mean"] == pytest.approx(0.5)
    assert d["diff"] == pytest.approx(0.5) and d["lo"] > 0
    # pass@k present with the same settings: the finished runs are reused without their models
    plan2 = make_plan(p, runs_dir=tmp_path / "runs")
    runner.execute(plan2, progress=False, train_cmd=train, passk_cmd=passk)
    assert {r.status for r in plan2.runs} == {"reused"}


def test_hypervolume_section_of_an_objective_spec(tmp_path):
    from posttrain.compare.spec import CompareError, load_spec

    p = tmp_path / "hv.yaml"
    p.write_text(textwrap.dedent(SPEC) + "hypervolume: {metrics: [accuracy, entropy_tail_mean], reference: [0.0, 1.0]}\n")
    plan = make_plan(p, runs_dir=tmp_path / "runs")
    runner.execute(plan, progress=False, train_cmd=fake_cmd)
    a = _report(plan)
    hv = a["hypervolume"]["arms"]
    # plain: (0.25, 5) on every seed -> 0.25 * (5 - 1) = 1.0; steer: (0.5, 10) -> 0.5 * 9 = 4.5; broken: no run
    assert hv["plain"]["hv_of_mean_point"] == pytest.approx(1.0) and hv["plain"]["mean"] == pytest.approx(1.0)
    assert hv["plain"]["sd"] == pytest.approx(0.0) and hv["plain"]["n_seeds"] == 3
    assert hv["steer"]["hv_of_mean_point"] == pytest.approx(4.5) and hv["steer"]["per_seed"][2] == pytest.approx(4.5)
    assert hv["broken"]["n_seeds"] == 0
    md = Path(a["paths"]["markdown"]).read_text()
    assert "## Hypervolume" in md and "| steer | 3 | (0.500, 10.000) | 4.5 | 4.5 ± 0 |" in md
    assert "| broken | 0 | n/a" in md
    for bad, msg in (("{metrics: [accuracy, nope], reference: [0, 0]}", "unknown metric 'nope'"),
                     ("{metrics: [accuracy, entropy_auc], reference: [0]}", "one value per metric")):
        p.write_text(textwrap.dedent(SPEC) + f"hypervolume: {bad}\n")
        with pytest.raises(CompareError, match=msg):
            load_spec(p)


def test_gain_over_the_initial_model_pairs_items_with_eval_before(spec_path, tmp_path):
    plan = make_plan(spec_path, runs_dir=tmp_path / "runs")
    # 20 items; the initial model gets items 0-4 right (0.25); plain after gets items 0-14 (0.75) on every seed;
    # steer gets items 0-4 on seeds 0 and 1, nothing on seed 2; broken nothing; only the baseline's runs evaluated
    # the initial model
    initial = [1.0] * 5 + [0.0] * 15
    after = {"plain": lambda s: [1.0] * 15 + [0.0] * 5, "steer": lambda s: initial if s < 2 else [0.0] * 20,
             "broken": lambda s: [0.0] * 20}
    for r in plan.runs:
        r.status = "ok"
        r.out.mkdir(parents=True)
        scores = after[r.arm](r.seed)
        ev = {"after": {"accuracy": sum(scores) / 20, "mean_score": sum(scores) / 20, "n": 20, "item_scores": scores}}
        if r.arm == "plain":
            ev["before"] = {"accuracy": 0.25, "mean_score": 0.25, "n": 20, "item_scores": initial}
        (r.out / "summary.json").write_text(json.dumps({"eval": ev, "train_seconds": 1.0, "global_step": 2}))
    a = _report(plan)
    assert a["initial"]["accuracy"] == 0.25
    g = a["gains_over_initial"]
    # plain: +1 on items 5-14, 0 elsewhere, on every seed -> +0.5; a draw of 20 items misses all ten w.p. 2^-20
    assert g["plain"]["accuracy"]["diff"] == pytest.approx(0.5)
    assert g["plain"]["accuracy"]["reading"].startswith("higher than the initial model by 0.500")
    # steer: (0 + 0 - 0.25) / 3 per seed mean -> -1/12; broken: -0.25 exactly
    assert g["steer"]["accuracy"]["diff"] == pytest.approx(-1 / 12)
    t = g["steer"]["accuracy"]["t_over_seeds"]  # per-seed gains 0, 0, -0.25: sd 0.1443, se 0.0833, t(0.975, 2) 4.303
    assert t["mean"] == pytest.approx(-1 / 12) and t["hi"] - t["mean"] == pytest.approx(4.302653 * 0.25 / 3, rel=1e-5)
    assert g["broken"]["accuracy"]["diff"] == pytest.approx(-0.25) and g["broken"]["accuracy"]["hi"] < 0
    md = Path(a["paths"]["markdown"]).read_text()
    assert "## Gain over the initial model" in md
    assert "| broken | accuracy | 0.250 | 0.000 | -0.250 [" in md and "3 seeds × 20 items" in md
    # paired differences show the t over seeds beside the bootstrap: steer - plain per seed -0.5, -0.5, -0.75
    t = a["differences"]["steer"]["accuracy"]["paired_t"]
    assert t["diff"] == pytest.approx(-7 / 12) and "| paired t over seeds [95 % CI] |" in md
    assert f"| {t['diff']:+.3f} [{t['lo']:.3f}, {t['hi']:.3f}] |" in md
