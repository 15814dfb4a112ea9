"""ReLIFT (arXiv 2506.07527): the hardest-prompt selection, the newest-first buffer and the SFT loss by hand; in the
real GRPO trainer (tiny model, which fails every prompt): the buffer fills with (prompt, demonstration) rows, the SFT
phase changes the parameters where plain GRPO's zero-advantage step does not, the SFT inputs are the rollout's
prompt rendering plus demonstration + EOS; bad input is one line with exit 2; the tiny twin runs and resumes exactly."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trl import GRPOConfig

from posttrain.data import arithmetic_problems
from posttrain.errors import UserError
from posttrain.losses import relift_sft_loss
from posttrain.models import load_tiny_model
from posttrain.recipes import RecipeError, load_recipe
from posttrain.weighting.hardest import HardestBuffer, select_hardest

ROOT = Path(__file__).resolve().parents[1]
G = 4


# ------------------------------------------------------------------------------------------------- pure parts
def test_select_hardest_by_hand():
    r = torch.tensor([[0.0, 0.0, 0.0, 0.0],      # all fail: hardest
                      [0.0, 1.0, 0.0, 0.0],      # one success: not
                      [-1.0, -1.0, -1.0, -1.0],  # all format errors (official -1): not
                      [0.0, -1.0, 0.0, 0.0],     # mixed fail / format error: not (official)
                      [0.0, float("nan"), 0.0, 0.0]])  # a failed reward: outcome unknown, not
    assert select_hardest(r).tolist() == [True, False, False, False, False]
    assert select_hardest(r, fail_value=-1.0).tolist() == [False, False, True, False, False]
    # continuous rewards [inferred]: every rollout <= threshold
    c = torch.tensor([[0.1, 0.2], [0.1, 0.6], [0.3, 0.3]])
    assert select_hardest(c, threshold=0.3).tolist() == [True, False, True]
    assert select_hardest(torch.zeros(0, 4)).tolist() == []
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        select_hardest(torch.zeros(8))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 1.0, -1.0]), min_size=3, max_size=3), min_size=1, max_size=6))
def test_select_hardest_matches_its_definition(rows):
    got = select_hardest(torch.tensor(rows)).tolist()
    assert got == [all(v == 0.0 for v in row) for row in rows]


def test_buffer_is_newest_first_and_takes_the_first_k():
    b = HardestBuffer()
    assert len(b) == 0 and not b.ready(1) and b.take(2) == []  # empty buffer: length 0, no crash
    b.add(["a1", "a2"])
    b.add(["b1"])
    assert b.rows() == ["b1", "a1", "a2"] and b.ready(3) and not b.ready(4)
    assert b.take(2) == ["b1", "a1"] and b.rows() == ["a2"]
    state = b.state_dict()
    c = HardestBuffer()
    c.load_state_dict(torch.load(_roundtrip(state), weights_only=True))
    assert c.rows() == ["a2"]
    capped = HardestBuffer(capacity=2)
    capped.add([1, 2])
    capped.add([3])
    assert capped.rows() == [3, 1]
    with pytest.raises(ValueError, match="capacity"):
        HardestBuffer(capacity=0)
    with pytest.raises(ValueError, match="not a HardestBuffer state"):
        c.load_state_dict({"rows": "x"})


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_relift_sft_loss_by_hand():
    logps = torch.tensor([[math.log(0.5), math.log(0.25), 7.0], [math.log(0.5), 9.0, 9.0]], requires_grad=True)
    ent = torch.tensor([[1.0, 2.0, 50.0], [3.0, 50.0, 50.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # token mean over the 3 valid tokens: NLL (ln2 + ln4 + ln2)/3 = 4 ln2 / 3; entropy mean (1+2+3)/3 = 2
    loss = relift_sft_loss(logps, ent, mask, entropy_coef=0.001)
    assert loss.item() == pytest.approx(4 * math.log(2) / 3 - 0.001 * 2.0, rel=1e-6)
    loss.backward()
    assert logps.grad[0, 2] == 0 and ent.grad[1, 1] == 0  # padding gets no gradient
    assert ent.grad[0, 0].item() == pytest.approx(-0.001 / 3)
    assert relift_sft_loss(logps, ent, mask, entropy_coef=0.0).item() == pytest.approx(4 * math.log(2) / 3, rel=1e-6)
    empty = relift_sft_loss(logps, ent, torch.zeros_like(mask))
    assert empty.item() == 0.0  # no token: 0, not NaN
    with pytest.raises(ValueError, match="shape mismatch"):
        relift_sft_loss(logps, ent[:, :2], mask)


# ------------------------------------------------------------------------------------------------- in the trainer
@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _zero(completions, **kw):
    return [0.0] * len(completions)  # every rollout fails: every prompt is hardest


def _trainer(tiny, tmp_path, relift, **cfg):
    from posttrain.trainers import PosttrainGRPOTrainer

    model, tok = tiny
    args = dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2 * G, num_generations=G,
                max_completion_length=4, use_cpu=True, bf16=False, report_to="none", max_steps=1,
                gradient_checkpointing=False, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=0, temperature=1.0, beta=0.0, loss_type="dapo")
    args.update(cfg)
    return PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=[_zero], args=GRPOConfig(**args),
                                train_dataset=arithmetic_problems(32, low=1, high=9), processing_class=tok,
                                relift=relift)


RELIFT = {"sft_data_size": 2, "sft_batch_size": 2, "sft_micro_batch_size": 1, "sft_learning_rate": 1e-2}


def _params(tr):
    return [p.detach().clone() for p in tr.model.parameters() if p.requires_grad]


def test_sft_phase_changes_the_parameters_plain_grpo_does_not(tiny, tmp_path):
    """All rewards 0: GRPO's advantages are 0, so plain GRPO leaves the weights as they are; ReLIFT's SFT phase on
    the two buffered prompts moves them."""
    plain = _trainer(tiny, tmp_path / "plain", None)
    before = _params(plain)
    plain.train()
    assert all(torch.equal(a, b) for a, b in zip(before, _params(plain)))

    tr = _trainer(tiny, tmp_path / "relift", RELIFT)
    before = _params(tr)
    tr.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(tr)))
    logged = [h for h in tr.state.log_history if "relift/sft_steps" in h][0]
    assert logged["relift/hardest_prompts"] == 2 and logged["relift/sft_steps"] == 1  # one step, 2 micro-batches
    assert logged["relift/buffer_size"] == 0 and math.isfinite(logged["relift/sft_loss"])


def test_buffer_rows_and_sft_inputs(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, {**RELIFT, "sft_data_size": 4, "sft_batch_size": 4, "sft_micro_batch_size": 2})
    tr.model.train()
    rows = [dict(r) for r in arithmetic_problems(2, low=1, high=9, seed=5)]
    inputs = [r for r in rows for _ in range(G)]
    rewards = torch.zeros(2 * G, 1)
    rewards[G + 1, 0] = 1.0  # the second prompt is solved once: not hardest
    tr._relift_observe(inputs, rewards)
    assert tr._relift_buffer.rows() == [{"prompt": rows[0]["prompt"], "demonstration": rows[0]["solution"]}]
    tr._relift_observe(inputs[G:], torch.zeros(G, 1))
    assert [r["demonstration"] for r in tr._relift_buffer.rows()] == [rows[1]["solution"], rows[0]["solution"]]
    # the SFT sequence: the prompt exactly as the rollout tokenizes it, then the demonstration and EOS
    ids, mask, width = tr._sft_batch(tr._relift_buffer.rows())
    tok = tr.processing_class
    prompt_ids, _, _ = tr._tokenize_prompts([rows[1]["prompt"]])
    demo = tok(text=rows[1]["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = ids[0][mask[0].bool()].tolist()
    assert row == list(prompt_ids[0]) + demo
    assert width == max(len(demo), len(tok(text=rows[0]["solution"], add_special_tokens=False)["input_ids"]) + 1)
    # below the threshold nothing happens; the counters say so
    tr._relift_step_end()
    assert len(tr._relift_buffer) == 2 and tr._sft_steps == 0


def test_domain_heldout_batch_uses_the_same_rollout_layout(tiny, tmp_path):
    """The domain strategies' held-out batch comes from the same builder as ReLIFT's demonstrations: the prompt as
    the rollout tokenizes it, then the reference answer and EOS, and exactly the answer tokens + EOS labelled."""
    from types import SimpleNamespace

    from datasets import Dataset

    tr = _trainer(tiny, tmp_path, None)
    rows = [dict(r) for r in arithmetic_problems(3, low=1, high=9, seed=7)]
    tr._domain = SimpleNamespace(heldout=Dataset.from_list(rows))
    assert tr._domain_heldout_batches([]) == []
    (batch,) = tr._domain_heldout_batches([2, 0])
    tok = tr.processing_class
    for k, i in enumerate([2, 0]):
        prompt_ids, _, _ = tr._tokenize_prompts([rows[i]["prompt"]])
        answer = tok(text=str(rows[i]["answer"]), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        keep = batch["attention_mask"][k].bool()
        assert batch["input_ids"][k][keep].tolist() == list(prompt_ids[0]) + answer
        assert batch["labels"][k][batch["labels"][k] != -100].tolist() == answer
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_trainer_bad_relift_input_is_one_line(tiny, tmp_path):
    with pytest.raises(UserError, match=r"relift.demonstration_column: data.train: the dataset has no column 'nope'"):
        _trainer(tiny, tmp_path, {**RELIFT, "demonstration_column": "nope"})
    with pytest.raises(UserError, match="relift: .*sft_batch_size"):
        _trainer(tiny, tmp_path, {**RELIFT, "sft_batch_size": 3})


# ------------------------------------------------------------------------------------------------- recipes / CLI
def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("overrides, expected", [
    (["relift.demonstration_column=nope"], "relift.demonstration_column: data.train: the dataset has no column 'nope'"),
    (["data.train.name=tweets", "data.train.args={n: 16}", "relift.demonstration_column=null"],
     "relift.demonstration_column: data.train: the dataset has neither a 'solution' nor an 'answer' column"),
    (["relift.sft_batch_size=3"], "relift: sft_batch_size (3) must divide sft_data_size (2)"),
    (["algorithm=sft", "data.train.name=arithmetic_sft"], "relift: ReLIFT interleaves fine-tuning with GRPO"),
    (["distributed.zero_stage=2"], "relift: not available with DeepSpeed"),
    (["relift.sft_learning_rate=0"], "relift.sft_learning_rate"),
])
def test_bad_relift_recipe_is_one_line_exit_2(tmp_path, overrides, expected):
    out = tmp_path / "run"
    res = _cli("run", "recipes/tiny_grpo_relift.yaml", f"output.dir={out}", *overrides)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert expected in lines[0], lines[0]
    assert not out.exists()  # before the output directory is touched


def test_empty_demonstration_is_one_line_exit_2(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"What is {i}+1?", "answer": str(i + 1),
                                          "solution": "" if i == 3 else str(i + 1)}) for i in range(8)))
    res = _cli("validate", "recipes/tiny_grpo_relift.yaml", "data.train.name=file", f"data.train.args={{path: {data}}}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert "relift.demonstration_column: data.train: column 'solution' has no demonstration in row 3" in lines[0]


def test_sft_data_size_that_can_never_trigger_warns(capsys):
    from posttrain.recipes import loader

    loader._WARNED.clear()
    load_recipe(ROOT / "recipes" / "tiny_grpo_relift.yaml", ["relift.sft_data_size=6", "relift.sft_batch_size=2"])
    err = capsys.readouterr().err
    assert "relift.sft_data_size (6) exceeds the 4 prompt(s) the run rolls out in train.max_steps=2" in err
    load_recipe(ROOT / "recipes" / "tiny_grpo_relift.yaml")
    assert "relift.sft_data_size" not in capsys.readouterr().err
    for name in ("grpo_relift", "tiny_grpo_relift"):
        r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        assert r.relift is not None and r.algorithm == "grpo"
    with pytest.raises(RecipeError, match="relift.fail_vaule: unknown key"):
        load_recipe(ROOT / "recipes" / "tiny_grpo_relift.yaml", ["relift.fail_vaule=0"])


@pytest.mark.slow
def test_tiny_relift_runs_and_resumes_exactly(tmp_path):
    """4 steps straight vs 3 + --resume to 4, with an SFT phase every 2 steps of 4 SFT optimizer steps each: the
    checkpoint at step 3 holds 2 buffered rows, and step 4's SFT phase (its later SFT steps depend on the restored
    AdamW moments) logs the same loss."""
    common = ["model.threads=1", "eval.enabled=false", "output.plots=false", "output.save_model=false",
              "train.save_steps=1", "relift.sft_data_size=4", "relift.sft_batch_size=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for args in ([f"output.dir={straight}", "train.max_steps=4"], [f"output.dir={resumed}", "train.max_steps=3"],
                 [f"output.dir={resumed}", "train.max_steps=4", "--resume"]):
        res = _cli("run", "recipes/tiny_grpo_relift.yaml", *common, *args)
        assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(resumed / "trainer" / "checkpoint-3" / "posttrain_state.pt", weights_only=True)
    assert len(state["relift"]["buffer"]["rows"]) == 2 and state["relift"]["sft_steps"] == 4
    assert state["relift"]["optimizer"]["state"]  # AdamW moments saved

    def rows(out):
        return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}

    a, b = rows(straight), rows(resumed)
    assert [a[s]["relift/buffer_size"] for s in (1, 2, 3, 4)] == [2, 0, 2, 0]
    assert "relift/sft_loss" not in a[3] and a[4]["relift/sft_steps"] == 8
    for key in ("relift/sft_loss", "relift/sft_steps", "relift/buffer_size", "relift/hardest_prompts"):
        assert a[4][key] == b[4][key], key
