"""EM-INF decoding (arXiv 2505.15134) in evaluation: the HF logits processor applies the pure adjustment at every
step before the sampling temperature; bad ``eval.em_inf`` values are one line naming the key, exit 2, before any
output directory is touched."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.data import arithmetic_problems
from posttrain.em_inf import EmInfLogitsProcessor, em_inf_generate_kwargs
from posttrain.evaluation import evaluate
from posttrain.losses import adaptive_temperature_logits, em_inf_adjust_logits
from posttrain.models import load_tiny_model
from posttrain.recipes.schema import EmInfSection
from posttrain.rewards import build_reward

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_tiny_model()


def test_processor_is_the_pure_adjustment():
    torch.manual_seed(0)
    z = torch.randn(3, 17)
    s = EmInfSection(n_grad_steps=4, kl_weight=0.01, threshold=0.0)
    torch.testing.assert_close(EmInfLogitsProcessor(s)(None, z), em_inf_adjust_logits(
        z, learning_rate=0.1, n_grad_steps=4, kl_weight=0.01, threshold=0.0, parity="batch"))
    a = EmInfSection(mode="adaptive_temperature", target_ratio=0.5, threshold=1e-5)
    torch.testing.assert_close(EmInfLogitsProcessor(a)(None, z), adaptive_temperature_logits(z, target_ratio=0.5,
                                                                                              threshold=1e-5))


def test_generate_kwargs_order_and_greedy():
    kw = em_inf_generate_kwargs(EmInfSection(temperature=0.1))
    assert kw["do_sample"] and [type(p).__name__ for p in kw["logits_processor"]] == [
        "EmInfLogitsProcessor", "TemperatureLogitsWarper"]  # adjust first, then the temperature (official order)
    greedy = em_inf_generate_kwargs(EmInfSection(temperature=0))
    assert greedy["do_sample"] is False and len(greedy["logits_processor"]) == 1


def test_evaluate_with_em_inf_runs_the_processor_every_step(tiny, monkeypatch):
    model, tok = tiny
    calls = []
    real = EmInfLogitsProcessor.__call__
    monkeypatch.setattr(EmInfLogitsProcessor, "__call__", lambda self, ids, scores: calls.append(1) or real(
        self, ids, scores))
    ds = arithmetic_problems(4, low=1, high=9)
    res = evaluate(model, tok, ds, build_reward("math_answer", {"mode": "strict"}), max_new_tokens=3, batch_size=4,
                   em_inf=EmInfSection(temperature=0.1))
    assert res["n"] == 4 and res["decoding"].startswith("em_inf (logits")
    assert 1 <= len(calls) <= 3  # one adjustment per decoding step (fewer if every row stopped)
    plain = evaluate(model, tok, ds, build_reward("math_answer", {"mode": "strict"}), max_new_tokens=3, batch_size=4)
    assert plain["decoding"] == "greedy" and len(calls) <= 3


@pytest.mark.parametrize("override, key", [
    ("eval.em_inf.n_grad_steps=0", "eval.em_inf.n_grad_steps"),
    ("eval.em_inf.learning_rate=0", "eval.em_inf.learning_rate"),
    ("eval.em_inf.kl_weight=-1", "eval.em_inf.kl_weight"),
    ("eval.em_inf.target_ratio=1.5", "eval.em_inf.target_ratio"),
    ("eval.em_inf.mode=beam", "eval.em_inf.mode"),
])
def test_bad_em_inf_value_is_one_line_exit_2_and_nothing_lost(tmp_path, override, key):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = subprocess.run([sys.executable, "-m", "posttrain", "run", "recipes/tiny_grpo.yaml", override,
                          f"output.dir={out}", "output.overwrite=true"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert (out / "keep.txt").read_text() == "precious" and sorted(os.listdir(out)) == ["keep.txt"]
