"""Recipe validation and CLI error handling: every bad input -> one line naming the key path, exit 2."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posttrain.cli import main
from posttrain.recipes import RecipeError, apply_overrides, load_recipe, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_grpo.yaml"


def _run_cli(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_every_shipped_recipe_validates():
    rows = shipped_recipes()
    assert {"quickstart", "tiny_grpo"} <= {name for name, _, _ in rows}
    for name, desc, path in rows:
        assert desc, f"{name} has no description"
        load_recipe(path)


def test_overrides_are_typed_and_nested():
    r = load_recipe(TINY, ["train.max_steps=5", "output.dir=/tmp/x", "rewards.0.weight=2", "model.lora.r=8"])
    assert r.train["max_steps"] == 5 and r.output.dir == "/tmp/x"
    assert r.rewards[0].weight == 2.0 and r.model.lora.r == 8
    assert r.name == "tiny_grpo"


def test_unknown_dpo_loss_type_is_a_recipe_error():
    with pytest.raises(RecipeError, match="train.loss_type: unknown DPO loss type 'bogus'"):
        load_recipe(ROOT / "recipes" / "tiny_dpo.yaml", ["train.loss_type=[sigmoid, bogus]"])
    assert load_recipe(ROOT / "recipes" / "tiny_dpo.yaml", ["train.loss_type=[ipo]"]).train["loss_type"] == ["ipo"]


def test_yaml_1_1_exponent_numbers_become_floats():
    """YAML 1.1 reads 1e-5 (no dot) as a string; TRL would hand the string to the optimizer (a traceback)."""
    r = load_recipe(TINY, ["train.learning_rate=1e-5"])
    assert r.train["learning_rate"] == 1e-5 and isinstance(r.train["learning_rate"], float)


def test_recipe_name_from_an_odd_file_name_is_sanitised(tmp_path):
    p = tmp_path / "my recipe (v2).yaml"
    p.write_text(TINY.read_text())
    assert load_recipe(p).name == "my_recipe__v2_"


def test_apply_overrides_does_not_mutate_input():
    data = {"train": {"a": 1}}
    out = apply_overrides(data, ["train.a=2", "new.key=x"])
    assert data == {"train": {"a": 1}} and out == {"train": {"a": 2}, "new": {"key": "x"}}


MUTATIONS = [
    # (description, mutate(data) or override list, expected substring of the message)
    ("unknown top-level key", lambda d: d.update(bogus=1), "bogus: unknown key"),
    ("unknown model key", lambda d: d["model"].update(nme="x"), "model.nme: unknown key"),
    ("missing model", lambda d: d.pop("model"), "model: required key is missing"),
    ("missing model.name", lambda d: d["model"].pop("name"), "model.name: required key is missing"),
    ("missing data", lambda d: d.pop("data"), "data: required key is missing"),
    ("missing data.train", lambda d: d["data"].pop("train"), "data.train: required key is missing"),
    ("wrong dtype", lambda d: d["model"].update(dtype="fp8"), "model.dtype"),
    ("lora r negative", lambda d: d["model"]["lora"].update(r=-1), "model.lora.r"),
    ("lora r string", lambda d: d["model"]["lora"].update(r="big"), "model.lora.r"),
    ("lora unknown key", lambda d: d["model"]["lora"].update(rank=4), "model.lora.rank: unknown key"),
    ("algorithm unknown", lambda d: d.update(algorithm="ppo"), "algorithm"),
    ("rewards not a list", lambda d: d.update(rewards="math"), "rewards"),
    ("reward without name", lambda d: d["rewards"][0].pop("name"), "rewards.0.name: required key is missing"),
    ("reward negative weight", lambda d: d["rewards"][0].update(weight=-1), "rewards.0.weight"),
    ("reward unknown key", lambda d: d["rewards"][0].update(wieght=1), "rewards.0.wieght: unknown key"),
    ("unknown reward name", lambda d: d["rewards"][0].update(name="nope"), "rewards.0.name: unknown reward 'nope'"),
    ("bad reward import path", lambda d: d["rewards"][0].update(name="no_such_mod:fn"), "rewards.0.name: cannot import"),
    ("no rewards for grpo", lambda d: d.update(rewards=[]), "rewards"),
    ("unknown dataset", lambda d: d["data"]["train"].update(name="imdb"), "data.train.name: unknown dataset 'imdb'"),
    ("dataset args not a mapping", lambda d: d["data"]["train"].update(args=[1]), "data.train.args"),
    ("unknown train key", lambda d: d["train"].update(max_stepz=3), "train.max_stepz: unknown key"),
    ("train wrong type", lambda d: d["train"].update(max_steps="many"), "train.max_steps"),
    ("train lr string", lambda d: d["train"].update(learning_rate="fast"), "train.learning_rate"),
    ("train lr negative", lambda d: d["train"].update(learning_rate=-1.0), "train.learning_rate: must be > 0"),
    ("train num_generations 1", lambda d: d["train"].update(num_generations=1), "train.num_generations"),
    ("train reserved output_dir", lambda d: d["train"].update(output_dir="/x"), "use 'output.dir'"),
    ("train reserved seed", lambda d: d["train"].update(seed=3), "use 'seed'"),
    ("train not a mapping", lambda d: d.update(train=[1, 2]), "train"),
    ("seed string", lambda d: d.update(seed="abc"), "seed"),
    ("weighting scope", lambda d: d.update(weighting={"scope": "world"}), "weighting.scope"),
    ("weighting unknown key", lambda d: d.update(weighting={"token": []}), "weighting.token: unknown key"),
    ("rollout engine", lambda d: d.update(rollout={"engine": "sglang"}), "rollout.engine"),
    ("rollout mode", lambda d: d.update(rollout={"mode": "remote"}), "rollout.mode"),
    ("zero stage 1", lambda d: d.update(distributed={"zero_stage": 1}), "distributed.zero_stage"),
    ("distributed unknown key", lambda d: d.update(distributed={"stage": 2}), "distributed.stage: unknown key"),
    ("eval tokens zero", lambda d: d["eval"].update(max_new_tokens=0), "eval.max_new_tokens"),
    ("eval unknown key", lambda d: d["eval"].update(bacth_size=2), "eval.bacth_size: unknown key"),
    ("output unknown key", lambda d: d["output"].update(directory="x"), "output.directory: unknown key"),
    ("output overwrite string", lambda d: d["output"].update(overwrite="maybe"), "output.overwrite"),
    ("logging steps zero", lambda d: d["output"].update(logging_steps=0), "output.logging_steps"),
    ("model name empty", lambda d: d["model"].update(name=""), "model.name"),
    ("threads zero", lambda d: d["model"].update(threads=0), "model.threads"),
    ("top level list", lambda d: "LIST", "mapping"),
    ("reward bad arg value", lambda d: d["rewards"][0]["args"].update(mode="weird"), "rewards.0.args"),
    ("reward unknown arg", lambda d: d["rewards"][0]["args"].update(mod="strict"), "rewards.0.args"),
    ("dataset unknown arg", lambda d: d["data"]["train"]["args"].update(hgh=3), "data.train.args: unknown argument 'hgh'"),
    ("eval dataset unknown", lambda d: d["data"]["eval"].update(name="gsm8k"), "data.eval.name: unknown dataset"),
    ("unknown token strategy", lambda d: d.update(weighting={"tokens": [{"name": "nope"}]}), "weighting.tokens.0.name"),
    ("token strategy unknown arg", lambda d: d.update(weighting={"tokens": [{"name": "steer", "w_mn": 1}]}),
     "weighting.tokens.0: steer: unknown argument 'w_mn'"),
    ("token strategy bad value", lambda d: d.update(weighting={"tokens": [{"name": "steer", "mode": "cubic"}]}),
     "mode must be one of"),
    ("token strategy out of range", lambda d: d.update(weighting={"tokens": [{"name": "high_entropy", "top_fraction": 1.5}]}),
     "weighting.tokens"),
    ("token strategy without name", lambda d: d.update(weighting={"tokens": [{"top_fraction": 0.2}]}),
     "weighting.tokens.0.name: required key is missing"),
    ("unknown objective strategy", lambda d: d.update(weighting={"objectives": {"name": "pareto"}}),
     "weighting.objectives.name"),
    ("objective unknown arg", lambda d: d.update(weighting={"objectives": {"name": "hypervolume", "foo": 1}}),
     "weighting.objectives: hypervolume: unknown argument 'foo'"),
    ("unknown pair strategy", lambda d: d.update(weighting={"pairs": [{"name": "wpo"}]}), "weighting.pairs.0.name"),
    ("unknown sequence strategy", lambda d: d.update(weighting={"sequences": [{"name": "gtpo"}]}),
     "weighting.sequences.0.name"),
    ("reward timeout zero", lambda d: d["rewards"][0].update(timeout=0), "rewards.0.timeout"),
    ("reward timeout text", lambda d: d["rewards"][0].update(timeout="soon"), "rewards.0.timeout"),
    ("failure fraction > 1", lambda d: d.update(reliability={"max_reward_failure_fraction": 1.5}),
     "reliability.max_reward_failure_fraction"),
    ("nonfinite steps 0", lambda d: d.update(reliability={"max_nonfinite_steps": 0}), "reliability.max_nonfinite_steps"),
    ("unknown reliability key", lambda d: d.update(reliability={"retries": 3}), "reliability.retries"),
    ("name escapes runs/", lambda d: d.update(name="../../etc"), "name"),
    ("name with slash", lambda d: d.update(name="a/b"), "name"),
    ("learning rate text", lambda d: d["train"].update(learning_rate="fast"), "train.learning_rate"),
]


@pytest.mark.parametrize("desc,mutate,expected", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_bad_recipe_gives_one_line_exit_2(tmp_path, capsys, desc, mutate, expected):
    """`posttrain run` (not just validate) on a bad recipe whose output.dir holds a previous run and which asks for
    overwrite: the error comes before anything touches the directory."""
    data = yaml.safe_load(TINY.read_text())
    data["output"].update(dir=str(tmp_path / "run"), overwrite=True)
    previous = tmp_path / "run" / "metrics.jsonl"
    previous.parent.mkdir()
    previous.write_text('{"step": 1}\n')
    result = mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump([1, 2] if result == "LIST" else data))
    code, out, err = _run_cli(capsys, "run", str(path))
    assert code == 2, (desc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("posttrain: error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert previous.read_text() == '{"step": 1}\n' and sorted(previous.parent.iterdir()) == [previous]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["validate", "does/not/exist.yaml"], "does not exist"),
        (["validate", "__TINY__", "train.max_steps"], "must look like key.path=value"),
        (["validate", "__TINY__", "rewards.5.weight=1"], "index '5' is not valid"),
        (["validate", "__TINY__", "train.max_steps=abc"], "train.max_steps"),
        (["validate", "__TINY__", "model.lora.r=0"], "model.lora.r"),
    ],
)
def test_cli_bad_arguments(capsys, argv, expected):
    argv = [str(TINY) if a == "__TINY__" else a for a in argv]
    code, _, err = _run_cli(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


def test_malformed_yaml(tmp_path, capsys):
    p = tmp_path / "broken.yaml"
    p.write_text("model: {name: tiny\ndata: [\n")
    code, _, err = _run_cli(capsys, "validate", str(p))
    assert code == 2 and "malformed YAML at line" in err and len(err.strip().splitlines()) == 1


def test_empty_recipe(tmp_path, capsys):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    code, _, err = _run_cli(capsys, "validate", str(p))
    assert code == 2 and "empty" in err


def test_yaml_is_loaded_safely(tmp_path, capsys):
    p = tmp_path / "evil.yaml"
    p.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    code, _, err = _run_cli(capsys, "validate", str(p))
    assert code == 2 and "malformed YAML" in err


def test_validate_ok_and_recipes_listing(capsys):
    code, out, _ = _run_cli(capsys, "validate", str(TINY))
    assert code == 0 and "OK" in out
    code, out, _ = _run_cli(capsys, "recipes")
    assert code == 0 and "quickstart" in out and "tiny_grpo" in out


def test_shipped_recipe_by_name(capsys):
    code, out, _ = _run_cli(capsys, "validate", "tiny_grpo")
    assert code == 0, out


def test_existing_output_dir_is_not_clobbered(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    code, _, err = _run_cli(capsys, "run", str(TINY), f"output.dir={run}", "output.overwrite=false")
    assert code == 2 and "already holds a run" in err
    assert (run / "summary.json").read_text() == "{}"


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run_cli(capsys, "run", str(TINY), f"output.dir={blocker}/sub")
    assert code == 2 and "output.dir" in err and len(err.strip().splitlines()) == 1


def test_missing_model_path(tmp_path, capsys):
    code, _, err = _run_cli(capsys, "run", str(TINY), f"output.dir={tmp_path}/r", "model.name=/no/such/model")
    assert code == 2 and "model.name" in err and "does not exist" in err


def test_module_entry_point_and_deepspeed_local_rank():
    # `deepspeed --module posttrain` calls: python -m posttrain --local_rank=0 <args>
    res = subprocess.run([sys.executable, "-m", "posttrain", "--local_rank=0", "validate", str(TINY)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "posttrain", "validate", str(TINY), "bogus.key=1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "bogus: unknown key" in res.stderr.strip().splitlines()[-1]


def test_recipe_docs_are_in_sync_with_the_schema():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_recipe_docs.py"), "--check"], cwd=ROOT)
    assert res.returncode == 0, "docs/recipes.md is stale: run python scripts/gen_recipe_docs.py"


def test_resume_without_checkpoint_is_a_user_error(tmp_path, capsys):
    code, _, err = _run_cli(capsys, "run", str(TINY), f"output.dir={tmp_path}/r", "--resume")
    assert code == 2 and "no complete checkpoint" in err and len(err.strip().splitlines()) == 1
