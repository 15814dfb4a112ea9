"""algorithm: sft -- PosttrainSFTTrainer against TRL 1.16's own SFTTrainer.compute_loss (fp64, <= 1e-6), the
``weight`` column and loss-based reweighting (Sow et al., arXiv 2502.06733) against hand computations, the
strategy state across checkpoints, the pre-flight checks, and (slow) the shipped tiny recipes end to end."""
import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
B = 4


def _tiny_model_and_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(29)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(F64), tokenizer


PROMPTS = ["w1 w2", "w3", "w4 w5 w6", "w7 w8"]
COMPLETIONS = [" w9 w10", " w11", " w12 w13 w14", " w15 w16"]


def _trainer(tmp_path, cls, weight=None, **kwargs):
    model, tokenizer = _tiny_model_and_tokenizer()
    args = trl.SFTConfig(output_dir=str(tmp_path / cls.__name__), report_to=[], bf16=False, use_cpu=True,
                         per_device_train_batch_size=B, save_strategy="no", max_steps=10, dataset_num_proc=None)
    data = {"prompt": PROMPTS, "completion": COMPLETIONS}
    if weight is not None:
        data["weight"] = weight
    trainer = cls(model=model, args=args, train_dataset=datasets.Dataset.from_dict(data),
                  processing_class=tokenizer, **kwargs)
    trainer.model.train()
    return trainer


def _batch(trainer):
    loader = trainer.get_train_dataloader()
    return {k: v for k, v in next(iter(loader)).items()}


def _loss_and_grad(trainer, inputs, num_items=None):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(inputs), num_items_in_batch=num_items)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    return loss.detach(), grads


def _per_token(trainer, inputs):
    """Per-token NLL [B, T-1] and label mask from a plain forward (logits -> log_softmax), in fp64."""
    with torch.no_grad():
        logits = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    lp = torch.log_softmax(logits[:, :-1].to(F64), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -lp * mask, mask


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    return _trainer(tmp_path_factory.mktemp("trl"), trl.SFTTrainer)


@pytest.mark.parametrize("num_items", [None, 23])
@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_neutral_weights_equal_trl_sft_loss(tmp_path, trl_trainer, num_items, loss_type):
    from posttrain.trainers.sft import PosttrainSFTTrainer

    ours = _trainer(tmp_path, PosttrainSFTTrainer, weight=[1.0] * B)
    assert ours._weighted  # the weight column takes the recomputed path
    trl_trainer.args.loss_type = ours.args.loss_type = loss_type
    inputs = _batch(ours)
    assert inputs["weight"].tolist() == [1.0] * B
    theirs_inputs = {k: v for k, v in inputs.items() if k != "weight"}
    l_trl, g_trl = _loss_and_grad(trl_trainer, theirs_inputs, num_items)
    l_ours, g_ours = _loss_and_grad(ours, inputs, num_items)
    torch.testing.assert_close(l_ours, l_trl, rtol=0, atol=1e-6)
    for a, b in zip(g_ours, g_trl):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    metrics = ours._metrics["train"]
    assert metrics["samples/weight_mean"][-1] == metrics["samples/weight_min"][-1] == 1.0
    trl_trainer.args.loss_type = "nll"


def test_burn_in_equals_trl_loss(tmp_path, trl_trainer):
    from posttrain.trainers.sft import PosttrainSFTTrainer

    ours = _trainer(tmp_path, PosttrainSFTTrainer,
                    sample_strategies=[{"name": "loss_reweighting", "burn_in_steps": 5}])
    inputs = _batch(ours)
    l_trl, _ = _loss_and_grad(trl_trainer, inputs)
    l_ours, _ = _loss_and_grad(ours, inputs)
    torch.testing.assert_close(l_ours, l_trl, rtol=0, atol=1e-6)


def test_no_weighting_is_trl_untouched(tmp_path):
    from posttrain.trainers.sft import PosttrainSFTTrainer

    ours = _trainer(tmp_path, PosttrainSFTTrainer)
    assert not ours._weighted and "weight" not in _batch(ours)


def test_weight_column_zeroing_half_the_batch(tmp_path):
    from posttrain.trainers.sft import PosttrainSFTTrainer

    ours = _trainer(tmp_path, PosttrainSFTTrainer, weight=[1.0, 0.0, 1.0, 0.0])
    inputs = _batch(ours)
    nll, mask = _per_token(ours, inputs)
    # TRL's denominator: every loss token of the micro-batch, the zero-weight samples' too
    w = inputs["weight"].to(F64)  # (the sampler shuffles the rows; the column follows them)
    assert sorted(w.tolist()) == [0.0, 0.0, 1.0, 1.0]
    hand = (w * nll.sum(1)).sum() / mask.sum()
    full = nll.sum() / mask.sum()
    loss, _ = _loss_and_grad(ours, inputs)
    torch.testing.assert_close(loss.to(F64), hand, rtol=0, atol=1e-5)  # TRL's fused head is fp32
    assert abs(loss.item() - full.item()) > 1e-3
    m = ours._metrics["train"]
    assert (m["samples/weight_mean"][-1], m["samples/weight_min"][-1], m["samples/weight_max"][-1]) == (0.5, 0.0, 1.0)


def _linupper_by_hand(losses, temperature):
    lmin, lmax = min(losses), max(losses)
    d = max(lmax - lmin, 1e-6)
    h = [2 * x / d - (lmax + lmin) / d for x in losses]
    f = [min(v + 1.0, 1.0) for v in h]
    g = [math.exp((v - max(f)) / temperature) for v in f]
    return [v / sum(g) for v in g]


def test_loss_reweighting_hand_case(tmp_path):
    from posttrain.trainers.sft import PosttrainSFTTrainer

    ours = _trainer(tmp_path, PosttrainSFTTrainer, weight=[1.0, 2.0, 1.0, 1.0], sample_strategies=[
        {"name": "loss_reweighting", "strategy": "linupper", "temperature": 0.4, "burn_in_steps": 0}])
    inputs = _batch(ours)
    nll, mask = _per_token(ours, inputs)
    n_i = mask.sum(1)
    mean_nll = (nll.sum(1) / n_i).tolist()  # the per-sample loss: token-mean NLL of the completion tokens
    w = _linupper_by_hand(mean_nll, 0.4)
    col = inputs["weight"].tolist()  # the rows' own column values (the sampler shuffles)
    hand = sum(col[i] * B * w[i] * nll[i].sum() for i in range(B)) / mask.sum()
    loss, _ = _loss_and_grad(ours, inputs)
    torch.testing.assert_close(loss.to(F64), hand, rtol=0, atol=1e-5)  # TRL's fused head is fp32
    # one process: the official repo's loss sum_i w_i (n_i / sum n) l_i * B (weight column 1)
    ours2 = _trainer(tmp_path / "b", PosttrainSFTTrainer, sample_strategies=[
        {"name": "loss_reweighting", "strategy": "linupper", "temperature": 0.4, "burn_in_steps": 0}])
    repo = sum(w[i] * (n_i[i] / n_i.sum()) * mean_nll[i] * B for i in range(B))
    loss2, _ = _loss_and_grad(ours2, _batch(ours2))
    torch.testing.assert_close(loss2.to(F64), torch.as_tensor(repo, dtype=F64), rtol=0, atol=1e-5)
    m = ours2._metrics["train"]
    assert m["samples/weight_mean"][-1] == pytest.approx(1.0)
    assert m["samples/weight_max"][-1] == pytest.approx(B * max(w))


def test_strategy_state_round_trip(tmp_path):
    from posttrain.trainers.sft import PosttrainSFTTrainer

    spec = [{"name": "loss_reweighting", "burn_in_steps": 3}]
    a = _trainer(tmp_path / "a", PosttrainSFTTrainer, sample_strategies=spec)
    a.state.global_step = 7
    _loss_and_grad(a, _batch(a))
    assert a.sample_strategies[0].state_dict() == {"num_steps": 7}
    path = tmp_path / "state.pt"
    torch.save(a.posttrain_state(), path)
    b = _trainer(tmp_path / "b", PosttrainSFTTrainer, sample_strategies=spec)
    assert b.sample_strategies[0].state_dict() == {"num_steps": 0}
    b.load_posttrain_state(torch.load(path, weights_only=True))
    assert b.sample_strategies[0].state_dict() == {"num_steps": 7}
    assert b.posttrain_state()["samples"] == a.posttrain_state()["samples"]


def test_bad_sample_strategy_is_one_line(tmp_path):
    from posttrain.errors import UserError
    from posttrain.trainers.sft import PosttrainSFTTrainer

    with pytest.raises(UserError, match=r"^weighting.samples.0: unknown sample strategy 'dra'"):
        _trainer(tmp_path, PosttrainSFTTrainer, sample_strategies=[{"name": "dra"}])
    with pytest.raises(UserError, match=r"^weighting.samples.0: loss_reweighting: temperature"):
        _trainer(tmp_path, PosttrainSFTTrainer, sample_strategies=[{"name": "loss_reweighting", "temperature": 0}])


def test_weighted_sft_loss_edges():
    from posttrain.losses import weighted_sft_loss

    lp = torch.tensor([[-1.0, -2.0, 5.0], [-3.0, 7.0, 7.0]], dtype=F64)  # junk where the mask is 0
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert weighted_sft_loss(lp, mask).item() == pytest.approx(6.0 / 3)
    assert weighted_sft_loss(lp, mask, torch.tensor([0.0, 2.0])).item() == pytest.approx(6.0 / 3)
    assert weighted_sft_loss(lp, mask, num_tokens=6).item() == pytest.approx(1.0)
    assert weighted_sft_loss(lp, torch.zeros_like(mask)).item() == 0.0  # no loss token: a finite zero
    dft = weighted_sft_loss(lp, mask, loss_type="dft").item()
    assert dft == pytest.approx((math.exp(-1) + 2 * math.exp(-2) + 3 * math.exp(-3)) / 3)
    with pytest.raises(ValueError, match="weights must have shape"):
        weighted_sft_loss(lp, mask, torch.ones(3))
    with pytest.raises(ValueError, match="weights has 1 non-finite"):
        weighted_sft_loss(lp, mask, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="loss_type must be one of"):
        weighted_sft_loss(lp, mask, loss_type="kto")


# ------------------------------------------------------------------------------------------------ data, recipes
def test_arithmetic_sft_builder():
    from posttrain.data import DATASETS, DataError

    ds = DATASETS.get("arithmetic_sft")(n=6, low=1, high=9, split="heldout", seed=1)
    assert set(ds.column_names) == {"prompt", "completion", "answer", "a", "b", "solution"}
    for row in ds:
        assert row["prompt"].endswith(f"A: {row['a']} + {row['b']} = ")  # the pre-fill ends the prompt
        assert row["completion"] == row["answer"] == str(row["a"] + row["b"])  # no EOS: TRL appends it
    plain = DATASETS.get("arithmetic")(n=6, low=1, high=9, split="heldout", seed=1, format="plain")
    assert list(plain["prompt"]) == list(ds["prompt"])  # the same problems and prompts as the prompt builder
    with pytest.raises(DataError, match="arithmetic_sft: format must be 'plain'"):
        DATASETS.get("arithmetic_sft")(n=2, format="conversational")


def test_trl_appends_eos_to_the_completion(tmp_path):
    from posttrain.data import DATASETS
    from posttrain.models import load_tokenizer
    from posttrain.trainers.sft import PosttrainSFTTrainer

    tok = load_tokenizer("tiny")
    model, _ = _tiny_model_and_tokenizer()
    model.resize_token_embeddings(len(tok))
    ds = DATASETS.get("arithmetic_sft")(n=2, low=1, high=9)
    args = trl.SFTConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True, save_strategy="no",
                         per_device_train_batch_size=2, dataset_num_proc=None)
    trainer = PosttrainSFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    row = trainer.train_dataset[0]
    loss_ids = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
    assert tok.decode(loss_ids) == ds[0]["completion"] + tok.eos_token  # the answer, then EOS; prompt masked


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_missing_sft_columns_is_one_line_exit_2(tmp_path):
    out = tmp_path / "x"
    res = _cli("run", "recipes/tiny_sft.yaml", f"output.dir={out}", "data.train.name=arithmetic")
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("posttrain: error: data.train: SFT needs columns prompt and completion, or messages, "
                               "or text")
    assert "the dataset has prompt, answer, a, b" in lines[0]
    assert not out.exists()  # checked before the output directory is touched


def test_sft_formats_and_weight_column_checks():
    from posttrain.errors import UserError
    from posttrain.pipelines.checks import check_sft_data, check_weight_column, sft_format

    D = datasets.Dataset.from_dict
    assert sft_format(D({"prompt": ["a"], "completion": ["b"]})) == "prompt-completion"
    assert sft_format(D({"messages": [[{"role": "user", "content": "hi"}]]})) == "messages"
    assert sft_format(D({"text": ["x"]})) == "text"
    assert sft_format(D({"body": ["x"]}), text_field="body") == "text"
    assert sft_format(D({"prompt": ["a"], "answer": ["b"]})) is None
    with pytest.raises(UserError, match=r"^data.train: SFT needs columns prompt and completion, or messages, or text "
                                        r".*the dataset has prompt, answer"):
        check_sft_data(D({"prompt": ["a"], "answer": ["b"]}), "data.train")
    check_weight_column(D({"weight": [0, 1.5]}), "data.train")
    for bad in (-1.0, float("nan")):
        with pytest.raises(UserError, match=r"^data.train: column 'weight' must hold finite numbers >= 0; row 1"):
            check_weight_column(D({"weight": [1.0, bad]}), "data.train")


@pytest.mark.parametrize("override, expected", [
    ("weighting.samples=[{name: dra}]", "weighting.samples.0.name: unknown sample strategy 'dra'; known: loss_reweighting; or give an import path "
     "'package.module:Class'"),
    ("weighting.samples=[{name: loss_reweighting, temperature: 0}]",
     "weighting.samples.0: loss_reweighting: temperature: Input should be greater than 0"),
    ("weighting.sequences=[{name: loss_reweighting}]", "weighting.sequences: not used by algorithm 'sft' (SFT takes "
                                                       "weighting.samples)"),
    ("train.loss_type=foo", "train.loss_type: unknown SFT loss type 'foo'"),
    ("train.num_generations=4", "train.num_generations: unknown key (not a field of trl.SFTConfig)"),
])
def test_sft_recipe_errors_are_one_line(override, expected):
    from posttrain.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError) as exc:
        load_recipe(ROOT / "recipes" / "tiny_sft.yaml", [override])
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_samples_need_algorithm_sft():
    from posttrain.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="weighting.samples: sample strategies weight the SFT loss"):
        load_recipe(ROOT / "recipes" / "tiny_grpo.yaml", ["weighting.samples=[{name: loss_reweighting}]"])


def test_burn_in_longer_than_the_run_warns_at_validate_time(capsys):
    from posttrain.recipes import load_recipe

    r = load_recipe(ROOT / "recipes" / "tiny_sft_loss_reweighting.yaml", ["weighting.samples.0.burn_in_steps=7"])
    assert r.weighting.samples[0].model_dump()["burn_in_steps"] == 7
    err = capsys.readouterr().err
    assert "loss_reweighting: burn_in_steps=7 >= max_steps=2" in err and "never acts" in err
    load_recipe(ROOT / "recipes" / "tiny_sft_loss_reweighting.yaml")  # burn_in_steps 0: no warning
    assert "burn_in_steps" not in capsys.readouterr().err


def test_shipped_sft_recipes_load():
    from posttrain.recipes import load_recipe

    for name in ("sft", "sft_loss_reweighting", "tiny_sft", "tiny_sft_loss_reweighting"):
        r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        assert r.algorithm == "sft" and r.data.train.name == "arithmetic_sft"
        assert bool(r.weighting.samples) == name.endswith("loss_reweighting")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tiny_sft", "tiny_sft_loss_reweighting"])
def test_tiny_sft_recipes_end_to_end(tmp_path, recipe):
    import json

    out = tmp_path / "run"
    res = _cli("run", f"recipes/{recipe}.yaml", f"output.dir={out}", "model.threads=1")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train_runtime" not in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "sft" and summary["global_step"] == 2
    for when in ("before", "after"):
        assert summary["eval"][when]["n"] == 8
        assert math.isfinite(summary["eval"]["heldout_nll"][when])
    if recipe.endswith("loss_reweighting"):  # no burn-in: the weights differ from the first step
        assert rows[0]["samples/weight_min"] < 1.0 < rows[0]["samples/weight_max"]
        assert rows[0]["samples/weight_mean"] == pytest.approx(1.0, abs=1e-5)
    else:
        assert "samples/weight_mean" not in rows[0]  # TRL's loss untouched
    assert (out / "model").is_dir() and (out / "training_curves.png").exists()


@pytest.mark.slow
def test_sft_resume_is_exact(tmp_path):
    """2 steps + --resume to 3 gives the 3-step run's step-3 metrics (weights, optimizer, data order, strategy)."""
    import json

    common = ["model.threads=1", "eval.enabled=false", "output.plots=false", "output.save_model=false",
              "train.lr_scheduler_type=constant", "train.save_steps=1"]
    recipe = "recipes/tiny_sft_loss_reweighting.yaml"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for args in ([f"output.dir={straight}", "train.max_steps=3"], [f"output.dir={resumed}", "train.max_steps=2"],
                 [f"output.dir={resumed}", "train.max_steps=3", "--resume"]):
        res = _cli("run", recipe, *common, *args)
        assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(resumed / "trainer" / "checkpoint-2" / "posttrain_state.pt", weights_only=True)
    assert set(state["samples"]) == {"0:loss_reweighting"} and "num_steps" in state["samples"]["0:loss_reweighting"]

    def step3(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in rows if r["step"] == 3 and "loss" in r)

    a, b = step3(straight), step3(resumed)
    for key in ("loss", "grad_norm", "samples/weight_min", "samples/weight_max"):
        assert a[key] == b[key], key


def test_posttrain_eval_of_an_sft_recipe_scores_prompts_without_pairs(capsys):
    import json

    from posttrain.cli import main

    code = main(["eval", "tiny_sft", "--json", "--threads", "1", "--n", "2"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    res = json.loads(cap.out)
    assert "pairs" not in res and res["prompts"]["n"] == 2 and res["prompts"]["reward"] == "math_answer"
