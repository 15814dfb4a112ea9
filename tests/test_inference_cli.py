"""``posttrain eval`` / ``posttrain generate`` on the tiny model and the tiny recipes (fast)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from posttrain import inference
from posttrain.cli import main
from posttrain.recipes.loader import RECIPES_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    from posttrain.models import load_tiny_model

    model, tok = load_tiny_model()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def _perturbed_run(tmp_path, tiny, recipe="tiny_grpo", scale=0.5) -> Path:
    """A run directory as `posttrain run` leaves it: model/ (here: the tiny model plus seeded noise) and the recipe."""
    import copy

    model, tok = tiny
    policy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.std().clamp(min=1e-3))
    run = tmp_path / "run"
    policy.save_pretrained(run / "model")
    tok.save_pretrained(run / "model")
    shutil.copy(RECIPES_DIR / f"{recipe}.yaml", run / "recipe.resolved.yaml")
    return run


def _logp_unpadded(model, tok, prompt_text, reply_text) -> float:
    """Independent reference: one sequence at a time, no padding, a loop over reply positions."""
    p = tok(prompt_text, add_special_tokens=False)["input_ids"]
    c = tok(reply_text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    total = 0.0
    for j, token in enumerate(c):
        pos = len(p) + j - 1  # the logits at pos predict token pos + 1
        total += float(torch.log_softmax(logits[pos], -1)[token])
    return total


def test_sequence_logps_match_a_per_sequence_loop(tiny):
    model, tok = tiny
    prompts = ["Say hi:", "A much longer prompt, so that the batch needs left-over padding:"]
    replies = [" hello there", " ok"]
    got = inference.sequence_logps(model, tok, prompts, replies, batch_size=2)
    eos = tok.eos_token
    want = [_logp_unpadded(model, tok, p, r + eos) for p, r in zip(prompts, replies)]
    assert got == pytest.approx(want, abs=1e-3)
    # conversational pairs: the reply is the chat template's assistant turn after the rendered prompt
    conv_p = [[{"role": "user", "content": "Say hi"}]]
    conv_c = [[{"role": "assistant", "content": "hello"}]]
    (got_c,) = inference.sequence_logps(model, tok, conv_p, conv_c)
    prompt_text = tok.apply_chat_template(conv_p[0], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(conv_p[0] + conv_c[0], tokenize=False)
    assert full.startswith(prompt_text) and "hello" in full[len(prompt_text):]
    assert got_c == pytest.approx(_logp_unpadded(model, tok, prompt_text, full[len(prompt_text):]), abs=1e-3)


def test_pair_metrics_hand_checked(tiny, tmp_path):
    model, tok = tiny
    run = _perturbed_run(tmp_path, tiny)
    policy, _ = inference._load(str(run / "model"))
    pairs = {"prompt": ["Q: colour?", "Q: number?", "Q: animal?"], "chosen": [" red", " seven", " cat"],
             "rejected": [" blue", " one two", " a large dog"]}
    res = inference.pair_metrics(policy, model, tok, pairs, beta=0.5)
    eos = tok.eos_token
    margins = []
    for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        dc = _logp_unpadded(policy, tok, p, c + eos) - _logp_unpadded(model, tok, p, c + eos)
        dr = _logp_unpadded(policy, tok, p, r + eos) - _logp_unpadded(model, tok, p, r + eos)
        margins.append(0.5 * (dc - dr))
    assert res["n"] == 3 and res["beta"] == 0.5
    assert res["mean_margin"] == pytest.approx(sum(margins) / 3, abs=1e-3)
    assert res["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 3)
    assert res["mean_chosen_reward"] - res["mean_rejected_reward"] == pytest.approx(res["mean_margin"], abs=1e-6)
    same = inference.pair_metrics(model, model, tok, pairs, beta=0.5)
    assert same["mean_margin"] == 0.0 and same["accuracy"] == 0.0  # ties count as wrong


def _cli(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed (e.g. DeepSpeed's import-time warning when `tiny` loads first)
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_eval_a_recipe_base_model_and_a_run_dir(tmp_path, capsys, tiny):
    code, out, err = _cli(capsys, "eval", "tiny_grpo", "--json", "--threads", "1")
    assert code == 0, err
    res = json.loads(out)
    assert res["target"] == "recipe" and res["model"] == "tiny" and "pairs" not in res
    p = res["prompts"]
    assert p["n"] == 8 and p["source"] == "data.eval" and p["reward"] == "math_answer" and 0 <= p["accuracy"] <= 1
    run = _perturbed_run(tmp_path, tiny)
    code, out, err = _cli(capsys, "eval", str(run), "--n", "3", "--out", str(tmp_path / "ev.json"))
    assert code == 0, err
    assert f"model   {run / 'model'}" in out and "held-out prompts (data.eval, greedy, scored by math_answer)" in out
    saved = json.loads((tmp_path / "ev.json").read_text())
    assert saved["target"] == "run" and saved["prompts"]["n"] == 3
    # the run's model/ alone finds the run's recipe next to it
    code, out, err = _cli(capsys, "eval", str(run / "model"), "--n", "2", "--json")
    assert code == 0 and json.loads(out)["recipe"] == str(run / "recipe.resolved.yaml"), err


def test_eval_dpo_pairs_against_the_base_model(tmp_path, capsys, tiny):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Q: colour?", "chosen": " red", "rejected": " blue"},
            {"prompt": "Q: animal?", "chosen": " cat", "rejected": " a large dog"}]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _cli(capsys, "eval", "tiny_dpo", "--data", str(pairs), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert "prompts" not in res and res["pairs"]["n"] == 2 and res["pairs"]["mean_margin"] == 0.0
    assert "reference model" in res["pairs"]["note"]
    run = _perturbed_run(tmp_path, tiny, recipe="tiny_dpo")
    code, out, err = _cli(capsys, "eval", str(run), "--data", str(pairs), "--json")
    assert code == 0, err
    q = json.loads(out)["pairs"]
    assert q["reference"] == "tiny" and q["beta"] == 0.1 and q["mean_margin"] != 0.0 and "note" not in q
    # the recipe's own held-out pairs (preferences split=heldout, generated by the tiny model) + its eval prompts
    code, out, err = _cli(capsys, "eval", str(run), "--n", "2")
    assert code == 0, err
    assert "preference pairs (preferences split=heldout; reference tiny, beta 0.1)" in out
    assert "held-out prompts (data.eval, greedy, scored by vader_sentiment)" in out


@pytest.mark.parametrize("argv,expected", [
    (["eval", "/no/such/dir"], "not a run directory, a model directory, a recipe file or a shipped recipe name"),
    (["eval", "tiny_grpo", "--n", "0"], "--n: must be >= 1 (got 0)"),
    (["eval", "tiny_grpo", "--data", "/no/such.jsonl"], "--data /no/such.jsonl: dataset file '/no/such.jsonl' does "
                                                        "not exist"),
    (["eval", "tiny_grpo", "eval.max_new_tokens=0"], "eval.max_new_tokens"),
    (["generate", "tiny_grpo", "hi", "--from-eval", "2"], "not several"),
])
def test_eval_generate_user_errors_are_one_line(capsys, argv, expected):
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and expected in err, err


def test_eval_error_cases_with_directories(tmp_path, capsys, tiny):
    run = _perturbed_run(tmp_path, tiny)
    shutil.copytree(run / "model", tmp_path / "bare_model")
    code, _, err = _cli(capsys, "eval", str(tmp_path / "bare_model"))
    assert code == 2 and "a model directory needs --recipe RECIPE" in err
    code, out, err = _cli(capsys, "eval", str(tmp_path / "bare_model"), "--recipe", "tiny_grpo", "--n", "1", "--json")
    assert code == 0 and json.loads(out)["target"] == "model", err
    shutil.rmtree(run / "model")
    code, _, err = _cli(capsys, "eval", str(run))
    assert code == 2 and "run directory has no saved model" in err
    prompts_only = tmp_path / "p.jsonl"
    prompts_only.write_text(json.dumps({"prompt": "hi"}) + "\n")
    code, _, err = _cli(capsys, "eval", "tiny_dpo", "--data", str(prompts_only), "--pairs")
    assert code == 2 and "pair metrics need columns prompt, chosen, rejected" in err


def test_generate_from_the_command_line_a_file_and_the_eval_set(tmp_path, capsys):
    code, out, err = _cli(capsys, "generate", "tiny_grpo", "What is 2+3?", "--greedy", "--json",
                          "--max-new-tokens", "4", "--prefill", "2 + 3 = ")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["prompt"] == [{"role": "user", "content": "What is 2+3?"},
                             {"role": "assistant", "content": "2 + 3 = "}]
    assert row["rendered"].endswith("<|im_start|>assistant\n2 + 3 = ") and len(row["replies"]) == 1
    code, out2, _ = _cli(capsys, "generate", "tiny_grpo", "What is 2+3?", "--greedy", "--json",
                         "--max-new-tokens", "4", "--prefill", "2 + 3 = ")
    assert json.loads(out2) == [row]  # greedy is deterministic
    txt = tmp_path / "prompts.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    code, out, err = _cli(capsys, "generate", "tiny_grpo", "--file", str(txt), "--samples", "3", "--plain", "--json",
                          "--max-new-tokens", "3")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["rendered"] for r in rows] == ["first prompt", "second prompt"]
    assert all(len(r["replies"]) == 3 for r in rows)
    code, out, err = _cli(capsys, "generate", "tiny_grpo", "--from-eval", "2", "--greedy")
    assert code == 0, err
    assert out.startswith("[0] user: What is ") and "| assistant: " in out and out.count("\n[") == 1


def test_eval_a_run_whose_recipe_names_a_user_reward_from_the_cwd(tmp_path, capsys, tiny, monkeypatch):
    import sys

    run = _perturbed_run(tmp_path, tiny)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "my_eval_reward_mod.py").write_text("def fn(completions, **kw):\n    return [0.25 for _ in completions]\n")
    text = (run / "recipe.resolved.yaml").read_text()
    (run / "recipe.resolved.yaml").write_text(text + "\neval:\n  reward: {name: 'my_eval_reward_mod:fn'}\n")
    monkeypatch.chdir(proj)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    code, out, err = _cli(capsys, "eval", str(run), "--n", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["prompts"]["mean_score"] == 0.25


def test_json_stdout_is_only_json(capsys, monkeypatch):
    """Builders may print progress (the preferences builder announces its generation); with --json it goes to
    stderr."""
    def noisy_eval(target, **kw):
        print("[posttrain] generated 4 x 2 replies with tiny in 1 s")
        return {"target": target.kind, "model": target.model, "recipe": target.recipe_path}

    monkeypatch.setattr(inference, "run_eval", noisy_eval)
    code, out, err = _cli(capsys, "eval", "tiny_dpo", "--json")
    assert code == 0 and json.loads(out)["target"] == "recipe" and "generated 4 x 2" in err
    code, out, err = _cli(capsys, "eval", "tiny_dpo")
    assert out.startswith("[posttrain] generated") and "generated" not in err


def test_generate_with_em_inf_runs_the_adjustment_every_step(capsys, monkeypatch):
    from posttrain.em_inf import EmInfLogitsProcessor

    calls = []
    real = EmInfLogitsProcessor.__call__
    monkeypatch.setattr(EmInfLogitsProcessor, "__call__", lambda self, ids, scores: calls.append(
        (self.settings.mode, self.settings.n_grad_steps)) or real(self, ids, scores))
    code, out, err = _cli(capsys, "generate", "tiny_grpo", "What is 2+3?", "--json", "--max-new-tokens", "3",
                          "--samples", "2", "--em-inf", "{mode: logits, n_grad_steps: 5}")
    assert code == 0, err
    (row,) = json.loads(out)
    assert len(row["replies"]) == 2 and 1 <= len(calls) <= 3 and set(calls) == {("logits", 5)}
    calls.clear()
    code, out, err = _cli(capsys, "generate", "tiny_grpo", "What is 2+3?", "--json", "--max-new-tokens", "3",
                          "--greedy", "--em-inf", "default")
    assert code == 0 and len(json.loads(out)[0]["replies"]) == 1 and calls, err


@pytest.mark.parametrize("value, expected", [
    ("{n_grad_steps: 0}", "--em-inf.n_grad_steps: Input should be greater than or equal to 1"),
    ("{mode: beam}", "--em-inf.mode: Input should be 'logits' or 'adaptive_temperature'"),
    ("{steps: 3}", "--em-inf.steps: unknown argument"),
    ("fast", "--em-inf: expected 'recipe', 'default' or a mapping"),
    ("recipe", "--em-inf recipe: the recipe has no eval.em_inf section"),
])
def test_generate_em_inf_errors_are_one_line(capsys, value, expected):
    code, out, err = _cli(capsys, "generate", "tiny_grpo", "hi", "--em-inf", value)
    assert code == 2 and err.count("\n") == 1 and expected in err, err
