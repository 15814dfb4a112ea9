"""A failed attempt never deletes or blocks the previous run; `validate` catches what `run` would.

Every bad input below is given to `posttrain run` with `output.overwrite: true` (as every shipped recipe has) over
an existing run, and to `posttrain validate`: exit code 2, exactly one line on stderr (captured at the file
descriptor, so library logging counts too), the previous run's files byte-identical, nothing left beside it.
Most of these fail before any model is loaded; the few real (tiny) runs are marked slow.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_grpo.yaml"
TINY_DPO = ROOT / "recipes" / "tiny_dpo.yaml"
QUICK = ["model.threads=1", "eval.enabled=false", "output.plots=false", "output.save_model=false"]


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
        h.update(b"\1")
    return h.hexdigest()


def previous_run(parent: Path) -> Path:
    """A finished run's files (contents arbitrary; only their bytes are compared)."""
    d = parent / "run"
    (d / "model").mkdir(parents=True)
    (d / "trainer" / "checkpoint-2").mkdir(parents=True)
    (d / "recipe.resolved.yaml").write_text("# resolved from an earlier recipe\nname: earlier\n")
    (d / "summary.json").write_text(json.dumps({"global_step": 2, "eval": {}}))
    (d / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n')
    (d / "model" / "model.safetensors").write_bytes(os.urandom(256))
    (d / "trainer" / "checkpoint-2" / "posttrain_complete.json").write_text('{"global_step": 2}')
    return d


def cli(capfd, *argv):
    code = main([str(a) for a in argv])
    cap = capfd.readouterr()
    return code, cap.out, cap.err


def assert_one_line_error(code, err, expected):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("posttrain: error: ") and expected in lines[0], lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def data_file(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nope.jsonl"
    if kind == "empty":
        return write(tmp_path / "empty.jsonl", "")
    if kind == "corrupt":
        return write(tmp_path / "corrupt.jsonl", '{"prompt": "What is 1+1?"\n{not json at all\n')
    if kind == "no_prompt":
        return write(tmp_path / "questions.jsonl", '{"question": "What is 1+1?"}\n{"question": "What is 2+2?"}\n')
    if kind == "prompts":
        return write(tmp_path / "prompts.jsonl", '{"prompt": "Say hi."}\n{"prompt": "Say hello."}\n')
    raise ValueError(kind)


# (id, recipe, overrides (with {data:<kind>} placeholders), expected part of the one line)
BAD_INPUTS = [
    ("missing data file", TINY, ["data.train={name: file, args: {path: '{data:missing}'}}"], "does not exist"),
    ("empty data file", TINY, ["data.train={name: file, args: {path: '{data:empty}'}}"], "is empty"),
    ("corrupt data file", TINY, ["data.train={name: file, args: {path: '{data:corrupt}'}}"], "cannot read"),
    ("no prompt column", TINY, ["data.train={name: file, args: {path: '{data:no_prompt}'}}"],
     "data.train: dataset file"),
    ("eval file missing", TINY, ["data.eval={name: file, args: {path: '{data:missing}'}}"], "data.eval:"),
    ("builder returns 0 rows", TINY, ["data.train.name=bad_builders:zero_rows", "data.train.args={}"],
     "data.train: dataset builder 'bad_builders:zero_rows' returned no rows"),
    ("builder returns a list", TINY, ["data.train.name=bad_builders:a_list", "data.train.args={}"],
     "returned a list, not a datasets.Dataset"),
    ("builder without prompt", TINY, ["data.train.name=bad_builders:no_prompt", "data.train.args={}"],
     "data.train: the dataset has no column 'prompt' (columns: question)"),
    ("builder crashes", TINY, ["data.train.name=bad_builders:crashes", "data.train.args={}"],
     "data.train: dataset builder 'bad_builders:crashes' failed: KeyError"),
    ("eval builder without prompt", TINY, ["data.eval.name=bad_builders:no_prompt", "data.eval.args={}"],
     "data.eval: the dataset has no column 'prompt'"),
    ("local model path missing", TINY, ["model.name=./no/such/model"], "model.name: model path './no/such/model' "
                                                                        "does not exist"),
    ("model file not a dir", TINY, ["model.name={data:prompts}"], "is not a Hugging Face model directory"),
    ("hub-like name offline", TINY, ["model.name=nosuchorg/nosuchmodel"], "not in the Hugging Face cache"),
    ("temperature 0", TINY, ["train.temperature=0"], "train.temperature: must be > 0"),
    ("temperature negative", TINY, ["train.temperature=-0.5"], "train.temperature: must be > 0"),
    ("grad accumulation 0", TINY, ["train.gradient_accumulation_steps=0"], "train.gradient_accumulation_steps"),
    ("negative completion length", TINY, ["train.max_completion_length=-1"], "train.max_completion_length"),
    ("unknown GRPO loss", TINY, ["train.loss_type=ppo_clip"], "train.loss_type: unknown GRPO loss type 'ppo_clip'"),
    ("eval strategy", TINY, ["train.eval_strategy=steps"], "train.eval_strategy: TRL's in-training evaluation"),
    ("push to hub", TINY, ["train.push_to_hub=true"], "train.push_to_hub: posttrain runs offline"),
    ("TRL post-init check", TINY, ["train.per_device_train_batch_size=3"],
     "train: generation_batch_size (3) must be divisible by num_generations (4)"),
    ("tracking backend missing", TINY, ["output.report_to=[wandb]"],
     "output.report_to.0: logging backend 'wandb' is not installed"),
    ("tracking backend unknown", TINY, ["output.report_to=[tensorbored]"],
     "output.report_to.0: unknown logging backend 'tensorbored'"),
    ("DPO data without pairs", TINY_DPO, ["data.train={name: file, args: {path: '{data:prompts}'}}"],
     "data.train: DPO needs preference pairs with columns prompt, chosen, rejected; missing chosen, rejected"),
    ("DPO max_length 0", TINY_DPO, ["train.max_length=0"], "train.max_length: must be > 0"),
    ("DPO grad accumulation 0", TINY_DPO, ["train.gradient_accumulation_steps=0"],
     "train.gradient_accumulation_steps"),
    ("DPO eval needs a scorer", TINY_DPO, ["rewards=[]"], "eval.reward: DPO evaluation needs a scoring reward"),
]


def _overrides(tmp_path, overrides):
    out = []
    for o in overrides:
        while "{data:" in o:
            start = o.index("{data:")
            end = o.index("}", start)
            o = o[:start] + str(data_file(tmp_path, o[start + 6:end])) + o[end + 1:]
        out.append(o)
    return out


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("desc,recipe,overrides,expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_and_keeps_the_previous_run(tmp_path, capfd, command, desc, recipe, overrides,
                                                          expected):
    prev = previous_run(tmp_path)
    argv = [command, recipe, *_overrides(tmp_path, overrides), f"output.dir={prev}", "output.overwrite=true",
            "model.threads=1"]
    before, entries = tree_hash(tmp_path), sorted(tmp_path.iterdir())
    t0 = time.monotonic()
    code, _, err = cli(capfd, *argv)
    assert_one_line_error(code, err, expected)
    assert time.monotonic() - t0 < 30, "a bad input must fail fast (no hub retries, no training)"
    assert sorted(tmp_path.iterdir()) == entries  # nothing beside the previous run (no run.incoming)
    assert tree_hash(tmp_path) == before  # the previous run (and the data files) byte-identical


def test_bad_model_path_fails_fast_without_hub_retries(tmp_path, capfd, monkeypatch):
    """A hub-looking name that is not cached, with the hub unreachable and not in offline mode: seconds, not the
    ~50 s transformers spends retrying."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    t0 = time.monotonic()
    code, _, err = cli(capfd, "validate", TINY, "model.name=my_models/finetuned")
    assert_one_line_error(code, err, "model.name: 'my_models/finetuned' is not a local model directory")
    assert "hub is unreachable" in err and time.monotonic() - t0 < 15


def test_validate_does_not_load_model_weights(capfd, monkeypatch):
    import transformers

    def refuse(*a, **k):
        raise AssertionError("validate loaded model weights")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    for recipe in (TINY, ROOT / "recipes" / "tiny_dpo_madpo.yaml"):
        code, out, err = cli(capfd, "validate", recipe)
        assert code == 0 and "OK" in out, err


def test_overwrite_never_deletes_a_directory_posttrain_did_not_write(tmp_path, capfd):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    code, _, err = cli(capfd, "run", TINY, f"output.dir={mine}", "output.overwrite=true")
    assert_one_line_error(code, err, "is not empty and is not a posttrain run")
    assert (mine / "thesis.tex").read_text() == "precious" and sorted(tmp_path.iterdir()) == [mine]


# ------------------------------------------------------------------------------------- layout (no training)
def test_plan_run_dirs_layouts(tmp_path):
    from posttrain.errors import UserError
    from posttrain.pipelines.outdirs import plan_run_dirs
    from posttrain.recipes import load_recipe

    def plan(out, resume=False, overwrite=True):
        r = load_recipe(TINY, [f"output.dir={out}", f"output.overwrite={str(overwrite).lower()}"])
        return plan_run_dirs(r, resume)

    fresh = plan(tmp_path / "new")
    assert (fresh.work, fresh.beside) == (tmp_path / "new", False)
    prev = previous_run(tmp_path)
    over = plan(prev)
    assert over.work == tmp_path / "run.incoming" and over.beside
    with pytest.raises(UserError, match="already holds a run"):
        plan(prev, overwrite=False)
    assert plan(prev, resume=True).work == prev  # resume works in place...
    ckpt = tmp_path / "run.incoming" / "trainer" / "checkpoint-1"
    ckpt.mkdir(parents=True)
    assert plan(prev, resume=True).work == prev  # (an incomplete checkpoint does not count)
    (ckpt / "posttrain_complete.json").write_text("{}")
    assert plan(prev, resume=True).work == tmp_path / "run.incoming"  # ...or continues the stopped replacement
    import shutil

    shutil.rmtree(prev)  # the user removed the previous run by hand; the stopped attempt is still beside it
    with pytest.raises(UserError, match="holds an unfinished attempt with checkpoints; pass --resume"):
        plan(prev, overwrite=False)
    assert plan(prev).work == prev  # overwrite: a fresh run in place (prepare() removes the stale attempt)
    assert not (tmp_path / "new").exists()  # planning writes nothing


# ---------------------------------------------------------------------------------------- real tiny runs
def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_failure_after_the_model_loads_leaves_nothing_behind_and_the_corrected_command_runs(tmp_path):
    """A UserError raised by the trainer's own set-up (after the output dir is prepared): the fresh directory is
    removed again, the previous run is byte-identical, and the corrected commands run (in place, and replacing)."""
    bad = ["weighting.tokens=[{name: steer}]", "weighting.normalize=weights"]  # dapo + weights: rejected at trainer init
    fresh = tmp_path / "fresh"
    res = _run("run", TINY, *bad, *QUICK, f"output.dir={fresh}", "output.overwrite=false")
    assert res.returncode == 2 and "weighting.tokens cannot be combined with" in _last_line(res.stderr), res.stderr
    assert not fresh.exists()
    prev = previous_run(tmp_path)
    before = tree_hash(prev)
    res = _run("run", TINY, *bad, *QUICK, f"output.dir={prev}")
    assert res.returncode == 2 and tree_hash(prev) == before and not (tmp_path / "run.incoming").exists()

    res = _run("run", TINY, *QUICK, "train.max_steps=1", f"output.dir={fresh}", "output.overwrite=false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((fresh / "summary.json").read_text())["global_step"] == 1
    res = _run("run", TINY, *QUICK, "train.max_steps=1", f"output.dir={prev}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"replaced the previous run in {prev}" in res.stdout and f"-> {prev}\n" in res.stdout
    summary = json.loads((prev / "summary.json").read_text())
    assert summary["recipe"] == "tiny_grpo" and summary["global_step"] == 1
    assert not (prev / "model").exists() and not (prev / "trainer" / "checkpoint-2").exists()  # the old run is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "run"]


@pytest.mark.slow
def test_stopped_replacement_keeps_the_previous_run_and_resume_finishes_it(tmp_path):
    """RunStopped (exit 3) while replacing a run: the previous run stays, the attempt is kept in run.incoming and
    named in the message; --resume (reward fixed) continues it there and swaps it in; resuming again is a no-op."""
    prev = previous_run(tmp_path)
    before = tree_hash(prev)
    incoming = tmp_path / "run.incoming"
    common = [*QUICK, "train.max_steps=2", "train.save_steps=1", f"output.dir={prev}"]
    res = _run("run", TINY, *common, "rewards=[{name: 'tests.faulty_rewards:flaky', args: {mode: raise, "
               "fraction: 1.0}}]")
    assert res.returncode == 3, res.stderr[-2000:]
    line = _last_line(res.stderr)
    assert line.startswith("posttrain: stopped: ") and f"this attempt is in {incoming}" in line
    assert tree_hash(prev) == before
    assert (incoming / "trainer" / "checkpoint-1" / "posttrain_complete.json").is_file()

    res = _run("run", TINY, *common, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {incoming / 'trainer' / 'checkpoint-1'}" in res.stdout
    assert not incoming.exists() and json.loads((prev / "summary.json").read_text())["global_step"] == 2
    assert [json.loads(x)["step"] for x in (prev / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in x] == [1, 2]
    after = tree_hash(prev)

    # --resume of a finished run: says so, exit 0, nothing trained or rewritten
    res = _run("run", TINY, *common, "--resume")
    assert res.returncode == 0 and "already finished" in res.stdout, res.stdout + res.stderr[-2000:]
    assert tree_hash(prev) == after
    # ... also when only the checkpoint at max_steps is left (killed after its last checkpoint)
    (prev / "summary.json").unlink()
    after = tree_hash(prev)
    res = _run("run", TINY, *common, "--resume")
    assert res.returncode == 0 and "nothing to train" in res.stdout, res.stdout + res.stderr[-2000:]
    assert tree_hash(prev) == after


# ------------------------------------------------------------------ TRL fields are honoured, never overridden
@pytest.mark.parametrize("overrides,expected", [
    (["train.reward_weights=[2]", "rewards.0.weight=3"],
     "train.reward_weights.0 (2) and rewards.0.weight (3.0) disagree; set the weights in one place"),
    (["train.reward_weights=[1, 1]"], "train.reward_weights: 2 weight(s) for 1 reward(s)"),
    (["train.reward_weights=[-1]"], "train.reward_weights.0: must be >= 0"),
    (["train.logging_steps=3", "output.logging_steps=2"],
     "train.logging_steps (3) and output.logging_steps (2) disagree; set one of them"),
    (["train.logging_steps=0.5"], "train.logging_steps: posttrain logs every N optimizer steps"),
    (["train.resume_from_checkpoint=/some/checkpoint-3"], "use 'posttrain run RECIPE --resume' instead"),
])
def test_trl_fields_owned_elsewhere_conflict_in_one_line(tmp_path, capfd, overrides, expected):
    prev = previous_run(tmp_path)
    before = tree_hash(prev)
    code, _, err = cli(capfd, "run", TINY, *overrides, f"output.dir={prev}")
    assert_one_line_error(code, err, expected)
    assert tree_hash(prev) == before and not (tmp_path / "run.incoming").exists()


def test_trl_fields_owned_elsewhere_are_honoured(tmp_path):
    from posttrain.pipelines.grpo import GRPOPipeline
    from posttrain.pipelines.skeleton import RunContext
    from posttrain.recipes import load_recipe

    def args_of(*overrides):
        r = load_recipe(TINY, [*overrides, f"output.dir={tmp_path}"])
        ctx = RunContext(recipe=r, out=tmp_path, resume=False, ckpt=None, train_ds=None, eval_ds=None, summary={})
        return r, GRPOPipeline().trl_args(ctx)

    r, args = args_of("train.reward_weights=[2.5]", "train.logging_steps=3")
    assert r.rewards[0].weight == 2.5 and args.reward_weights == [2.5]  # TRL sees it (it used to be dropped)
    assert r.output.logging_steps == 3 and args.logging_steps == 3
    assert "reward_weights" not in r.train and "logging_steps" not in r.train  # one source of truth
    r, args = args_of("train.reward_weights=[2]", "rewards.0.weight=2", "train.logging_steps=1",
                      "output.logging_steps=1")  # both given, agreeing: fine
    assert args.reward_weights == [2.0] and args.logging_steps == 1
    r, args = args_of()
    assert args.logging_steps == 1  # default unchanged


def test_interrupted_attempt_without_checkpoint_does_not_block_the_next_command(tmp_path, capfd, monkeypatch):
    """Ctrl-C during set-up (after the run dir was created, before any checkpoint): the directory is removed
    again, so the same command with output.overwrite=false is not refused afterwards."""
    from posttrain.pipelines.grpo import GRPOPipeline

    def interrupted(self, ctx):
        assert (ctx.out / "recipe.resolved.yaml").is_file()  # the attempt had written into the run dir
        raise KeyboardInterrupt

    monkeypatch.setattr(GRPOPipeline, "setup", interrupted)
    out = tmp_path / "run"
    code, _, err = cli(capfd, "run", TINY, f"output.dir={out}", "output.overwrite=false", "model.threads=1")
    assert code == 130 and "interrupted" in err
    assert not out.exists()
    prev = previous_run(tmp_path)  # and when replacing a run: the previous one stays, nothing beside it
    before = tree_hash(prev)
    code, _, err = cli(capfd, "run", TINY, f"output.dir={prev}", "model.threads=1")
    assert code == 130 and tree_hash(prev) == before and not (tmp_path / "run.incoming").exists()


def test_resume_without_checkpoint_creates_nothing(tmp_path, capfd):
    out = tmp_path / "never-ran"
    code, _, err = cli(capfd, "run", TINY, f"output.dir={out}", "--resume")
    assert_one_line_error(code, err, "--resume: no complete checkpoint in")
    assert not out.exists()
