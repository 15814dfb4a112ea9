"""posttrain.compare.spec: the schema, the plan, and one-line refusals (no training)."""
import textwrap
from pathlib import Path

import pytest

from posttrain.compare import CompareError, cli_main, load_spec, make_plan
from posttrain.compare.spec import COMPARE_DIR, recipe_key

TINY = """
name: t
baseline: plain
seeds: [0, 1]
arms:
  - {name: plain, recipe: tiny_grpo}
  - {name: steer, recipe: tiny_grpo_steer}
common_overrides: [train.max_steps=2]
threads: 1
"""


def _spec(tmp_path: Path, text: str = TINY) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def _error(path, **kw) -> str:
    with pytest.raises(CompareError) as e:
        make_plan(path, runs_dir=path.parent / "runs", **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_plan_lists_arm_by_seed_runs_with_the_harness_overrides(tmp_path):
    plan = make_plan(_spec(tmp_path), runs_dir=tmp_path / "runs")
    assert [r.id for r in plan.runs] == ["plain-s0", "plain-s1", "steer-s0", "steer-s1"]
    r = plan.runs[1]
    assert r.out == tmp_path / "runs" / "plain-s1"
    assert r.overrides[-4:] == ["seed=1", "model.threads=1", f"output.dir={r.out}", "output.overwrite=true"]
    assert "train.max_steps=2" in r.overrides and r.resolved["seed"] == 1 and r.resolved["train"]["max_steps"] == 2
    keys = {x.key for x in plan.runs}
    assert len(keys) == 4  # seeds and arms differ
    # the key ignores output.* and model.threads
    same = dict(r.resolved, output={"dir": "/elsewhere"}, model=dict(r.resolved["model"], threads=7))
    assert recipe_key(same) == r.key
    # ... and the checkpoint cadence (resume is exact), but not a setting that changes training
    ckpt = dict(r.resolved, train=dict(r.resolved["train"], save_steps=5, save_strategy="steps", save_total_limit=1))
    assert recipe_key(ckpt) == r.key
    assert recipe_key(dict(r.resolved, train=dict(r.resolved["train"], max_steps=3))) != r.key
    assert plan.out_dir == plan.runs_dir and plan.report_name == "t"


def test_shipped_spec_by_name_and_jobs_threads(tmp_path):
    plan = make_plan("tiny", runs_dir=tmp_path, jobs=2)
    assert plan.spec_path == COMPARE_DIR / "tiny.yaml" and plan.jobs == 2 and plan.threads == 1


@pytest.mark.parametrize("name", ["tiny", "token_weighting", "objective_weighting", "em_rl", "relift", "domains"])
def test_shipped_specs_plan(name, tmp_path):
    plan = make_plan(name, runs_dir=tmp_path)
    assert len(plan.runs) == len(plan.spec.arms) * len(plan.spec.seeds)


@pytest.mark.parametrize("name", ["dpo", "dpo_medium", "dpo_low"])
def test_shipped_dpo_specs_plan(name, tmp_path):
    assert load_spec(COMPARE_DIR / f"{name}.yaml").baseline == "dpo"
    make_plan(name, runs_dir=tmp_path)


def test_missing_recipe(tmp_path):
    msg = _error(_spec(tmp_path, TINY.replace("recipe: tiny_grpo_steer", "recipe: nope")))
    assert "arms.1.recipe: no shipped recipe 'nope'" in msg
    msg = _error(_spec(tmp_path, TINY.replace("recipe: tiny_grpo_steer", "recipe: ../missing.yaml")))
    assert "arms.1.recipe: recipe file" in msg and "relative to the spec file" in msg


def test_recipe_path_relative_to_the_spec(tmp_path):
    (tmp_path / "sub").mkdir()
    r = tmp_path / "sub" / "mine.yaml"
    r.write_text("extends: " + str(COMPARE_DIR.parent / "tiny_grpo.yaml") + "\n")
    plan = make_plan(_spec(tmp_path, TINY.replace("recipe: tiny_grpo_steer", "recipe: sub/mine.yaml")),
                     runs_dir=tmp_path / "runs")
    assert plan.recipe_paths["steer"] == r.resolve()


def test_baseline_not_in_spec(tmp_path):
    assert "baseline: 'nobody' is not an arm of this spec (arms: plain, steer)" in _error(
        _spec(tmp_path, TINY.replace("baseline: plain", "baseline: nobody")))


@pytest.mark.parametrize("text, needle", [
    (TINY + "colour: red\n", "colour: unknown key"),
    (TINY.replace("seeds: [0, 1]", "seeds: [0, 0]"), "seeds: seeds must be distinct"),
    (TINY.replace("name: steer", "name: plain"), "arms.1.name: duplicate arm name 'plain'"),
    (TINY.replace("name: steer", "name: 'a b'"), "arms.1.name: String should match pattern"),
    (TINY + "primary_metric: bleu\n", "primary_metric: unknown metric 'bleu'"),
    (TINY + "pass_at_k: {k: 4, samples: 2}\n", "samples (2) must be >= k (4)"),
    (TINY.replace("train.max_steps=2]", "train.max_steps=2, seed=3]"),
     "common_overrides.1: 'seed' is set by the harness for every run (spec key: seeds)"),
    (TINY.replace("recipe: tiny_grpo_steer}", "recipe: tiny_grpo_steer, overrides: [output.dir=/x]}"),
     "arms.1.overrides.0: 'output.dir' is set by the harness"),
    ("- just a list\n", "a spec must be a mapping"),
])
def test_bad_spec_is_one_line_naming_the_key(tmp_path, text, needle):
    msg = _error(_spec(tmp_path, text))
    assert needle in msg, msg
    assert str(tmp_path / "spec.yaml") in msg


def test_bad_override_names_the_arm(tmp_path):
    msg = _error(_spec(tmp_path, TINY.replace("recipe: tiny_grpo_steer}",
                                              "recipe: tiny_grpo_steer, overrides: [train.no_such_key=1]}")))
    assert "arms.1 (steer):" in msg and "train.no_such_key" in msg


@pytest.mark.parametrize("override, kind, key", [
    ("data.eval.args.n=4", "eval_set", "data.eval"),
    ("eval.max_new_tokens=5", "eval_set", "eval.max_new_tokens"),
    ("train.num_iterations=2", "rollout_schedule", "train.num_iterations"),
    ("train.steps_per_generation=2", "rollout_schedule", "train.steps_per_generation"),
    ("train.max_steps=3", "max_steps", "train.max_steps"),
])
def test_arms_must_agree_unless_allowed(tmp_path, override, kind, key):
    text = TINY.replace("recipe: tiny_grpo_steer}", f"recipe: tiny_grpo_steer, overrides: [{override}]}}")
    msg = _error(_spec(tmp_path, text))
    assert f"arms.1 (steer): {key} = " in msg and "differs from the baseline 'plain'" in msg
    assert f"allow_mismatch: [{kind}]" in msg
    make_plan(_spec(tmp_path, text + f"allow_mismatch: [{kind}]\n"), runs_dir=tmp_path / "runs")


def test_an_arm_without_held_out_evaluation_is_refused(tmp_path):
    text = TINY.replace("recipe: tiny_grpo_steer}", "recipe: tiny_grpo_steer, overrides: [eval.enabled=false]}")
    assert "arms.1 (steer): the recipe has no held-out evaluation" in _error(_spec(tmp_path, text))


def test_missing_spec_file_and_cli_exit_code(tmp_path, capsys):
    assert cli_main([str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posttrain: error: spec file") and "\n" not in err


@pytest.mark.parametrize("name", ["reasoning_tokens", "reasoning_sequences", "reasoning_seed", "dpo_testbed",
                                  "multiobj_tweets"])
def test_testbed_specs_plan_matched_and_paper_settings(name, tmp_path, capsys):
    plan = make_plan(name, runs_dir=tmp_path)
    assert plan.spec.seeds == [0, 1, 2, 3] and len(plan.runs) == 4 * len(plan.spec.arms)
    r = plan.recipes
    sched = {(t.get("num_iterations", 1), t.get("steps_per_generation")) for t in (x["train"] for x in r.values())}
    assert len(sched) == 1  # every arm shares the rollout schedule
    err = capsys.readouterr().err
    assert "warning" not in err.lower(), err  # no setting that makes a method do nothing
    if name == "reasoning_tokens":
        assert sched == {(2, None)} and all(x["train"]["epsilon_high"] == 0.28 for x in r.values())
    if name == "reasoning_sequences":
        lr = r["loss_reweighting"]["weighting"]["sequences"][0]
        assert 0 < lr["burn_in_steps"] < r["loss_reweighting"]["train"]["max_steps"]
    if name in ("reasoning_sequences", "reasoning_seed"):
        assert r["seed"]["train"]["scale_rewards"] == "none" == r["plain_unscaled"]["train"]["scale_rewards"]
        assert r["seed"]["train"]["loss_type"] == "dr_grpo" == r["plain_unscaled"]["train"]["loss_type"]
    if name == "dpo_testbed":
        assert {x["weighting"]["pairs"][0]["tau"] for a, x in r.items() if a.startswith("madpo")} == {6.907}
        assert r["madpo_oracle"]["reward_model"]["source"] == "columns"
        assert all(x["data"]["eval"]["args"]["n"] >= 256 for x in r.values())
    if name == "multiobj_tweets":
        assert plan.spec.hypervolume is not None and len(plan.spec.hypervolume.metrics) == 3
        assert r["hypervolume_reward"]["weighting"]["objectives"]["hypervolume"]["apply_to"] == "reward"
        assert r["hypervolume_adv"]["weighting"]["objectives"]["hypervolume"]["apply_to"] == "advantage"
        assert "cancels" not in err  # the reward placement runs with un-normalised advantages
        for arm, x in r.items():  # the pilot-chosen objectives: relevance that copying cannot satisfy, a length band
            rewards = {w["args"]["name"]: w["args"] for w in x["rewards"]}
            assert rewards["relevance"]["copy_penalty"] is True, arm
            assert arm == "trust" or rewards["brevity"]["min_tokens"] == 8, arm


def test_a_burn_in_longer_than_the_run_warns_when_a_spec_is_planned(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("name: s\nbaseline: a\nseeds: [0]\narms:\n  - {name: a, recipe: tiny_grpo}\n"
                 "  - {name: b, recipe: tiny_grpo, overrides: [\"weighting.sequences=[{name: loss_reweighting, "
                 "burn_in_steps: 1000}]\"]}\n")
    make_plan(p, runs_dir=tmp_path / "r")
    assert "burn_in_steps=1000 >= max_steps=2" in capsys.readouterr().err
