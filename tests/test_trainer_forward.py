"""ChunkedLogprobsMixin: the trainer's own forward through selective_logprobs_and_entropy gives TRL 1.16's fused-head
log-probs, entropies and gradients (full fine-tuning and LoRA), the same GRPO step, and falls back to TRL where
it does not apply."""
import copy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from posttrain.data import arithmetic_problems
from posttrain.models import load_tiny_model
from posttrain.trainers import PosttrainGRPOTrainer
from posttrain.trainers.forward import ChunkedLogprobsMixin

ROOT = Path(__file__).resolve().parents[1]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATOL = RTOL = 1e-5


T = PosttrainGRPOTrainer  # the chunked path is in its bases
assert issubclass(T, ChunkedLogprobsMixin)


def _length_reward(completions, **kw):  # varies within a group: non-zero advantages
    return [float(len(str(c)) % 7) for c in completions]


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _lora():
    from peft import LoraConfig

    # random A and B (B = 0 would make the adapter a no-op in the forward)
    return LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM", init_lora_weights=False)


def _trainer(tiny, tmp_path, *, lora=False, temperature=0.7, **cfg):
    model, tok = tiny
    cfg = {"per_device_train_batch_size": 4, "num_generations": 2, "max_completion_length": 6, "max_steps": 1,
           **cfg}
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none",
                      gradient_checkpointing=False, temperature=temperature, **cfg)
    torch.manual_seed(0)
    tr = T(model=copy.deepcopy(model), reward_funcs=[_length_reward], args=args,
           train_dataset=arithmetic_problems(8, low=1, high=9), processing_class=tok,
           peft_config=_lora() if lora else None)
    tr.current_gradient_accumulation_steps = 1
    tr.model.train()
    return tr


def _batch(seed=0, n=5, prompt=5, completion=7):
    """Left-padded prompts, right-padded completions (TRL's layout), the last row with an empty completion."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(10, 1000, (n, prompt), generator=g)
    completion_ids = torch.randint(10, 1000, (n, completion), generator=g)
    prompt_mask = torch.ones(n, prompt, dtype=torch.long)
    prompt_mask[1, :2] = 0
    prompt_mask[3, :4] = 0
    completion_mask = torch.ones(n, completion, dtype=torch.long)
    completion_mask[0, 4:] = 0
    completion_mask[2, 1:] = 0
    completion_mask[n - 1, :] = 0
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def _both(tr, *call_args, **kw):
    tr.chunked_logprobs = True
    ours = tr._get_per_token_logps_and_entropies(*call_args, **kw)
    tr.chunked_logprobs = False
    trl = tr._get_per_token_logps_and_entropies(*call_args, **kw)
    tr.chunked_logprobs = True
    return ours, trl


def _trainable(tr):
    return [p for p in tr.model.parameters() if p.requires_grad]


def _close(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    assert torch.allclose(a, b, atol=ATOL, rtol=RTOL), (a - b).abs().max().item()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_logps_and_entropies_equal_trl(tiny, tmp_path, lora, temperature):
    tr = _trainer(tiny, tmp_path, lora=lora, temperature=temperature)
    assert tr.chunked_logprobs_fallback(tr.model) is None
    p, pm, c, cm = _batch()
    ids, att = torch.cat([p, c], 1), torch.cat([pm, cm], 1)
    with torch.no_grad():
        for batch_size in (None, 2, 3):
            # completion only, completion + part of the prompt, everything (TRL then gives T - 1 columns)
            for keep in (c.size(1), c.size(1) + 2, ids.size(1)):
                (lp, ent, aux), (lp_t, ent_t, aux_t) = _both(tr, tr.model, ids, att, keep, batch_size=batch_size,
                                                             compute_entropy=True)
                _close(lp, lp_t)
                _close(ent, ent_t)
                assert aux is None and aux_t is None
                assert (lp[:, -c.size(1):][cm == 0] == 0).all() and (ent[:, -c.size(1):][cm == 0] == 0).all()
        (lp, ent, _), (lp_t, ent_t, _) = _both(tr, tr.model, ids, att, c.size(1), compute_entropy=False)
        _close(lp, lp_t)
        assert ent is None and ent_t is None


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_gradients_of_logps_and_entropies_equal_trl(tiny, tmp_path, lora, batch_size):
    tr = _trainer(tiny, tmp_path, lora=lora)
    tr.chunked_entropy_grad = True  # TRL's entropies always carry a gradient
    p, pm, c, cm = _batch(seed=1)
    ids, att = torch.cat([p, c], 1), torch.cat([pm, cm], 1)
    g = torch.Generator().manual_seed(2)
    w_lp, w_ent = torch.randn(c.shape, generator=g), torch.randn(c.shape, generator=g)
    params = _trainable(tr)
    grads = []
    for chunked in (True, False):
        tr.chunked_logprobs = chunked
        lp, ent, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, att, c.size(1), batch_size=batch_size,
                                                           compute_entropy=True)
        grads.append(torch.autograd.grad((lp * w_lp).sum() + 0.3 * (ent * w_ent).sum(), params))
    for a, b in zip(*grads):
        _close(a, b)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("entropy_coef", [0.0, 0.1])
@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_trainer_loss_and_gradients_equal_trl(tiny, tmp_path, lora, entropy_coef, loss_type):
    tr = _trainer(tiny, tmp_path, lora=lora, entropy_coef=entropy_coef, loss_type=loss_type)
    p, pm, c, cm = _batch(seed=3, n=4)
    g = torch.Generator().manual_seed(4)
    inputs = {"prompt_ids": p, "prompt_mask": pm, "completion_ids": c, "completion_mask": cm,
              "advantages": torch.randn(4, generator=g),
              "old_per_token_logps": -torch.rand(c.shape, generator=g) * 8,  # ratios != 1, clipping active
              "num_items_in_batch": cm.sum()}
    params = _trainable(tr)
    out = []
    for chunked in (True, False):
        tr.chunked_logprobs = chunked
        loss = tr._compute_loss(tr.model, inputs)
        out.append((loss.detach(), torch.autograd.grad(loss, params)))
    _close(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        _close(a, b)


def test_entropies_detached_without_bonus_differentiable_with(tiny, tmp_path):
    p, pm, c, cm = _batch()
    ids, att = torch.cat([p, c], 1), torch.cat([pm, cm], 1)
    tr = _trainer(tiny, tmp_path, lora=True)
    lp, ent, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, att, c.size(1), compute_entropy=True)
    assert lp.requires_grad and not ent.requires_grad  # frozen head, no bonus: the cheap backward
    tr = _trainer(tiny, tmp_path / "bonus", lora=True, entropy_coef=0.05)
    _, ent, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, att, c.size(1), compute_entropy=True)
    assert ent.requires_grad
    with torch.no_grad():
        _, ent, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, att, c.size(1), compute_entropy=True)
    assert not ent.requires_grad


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_one_grpo_step_equals_trl(tiny, tmp_path, lora):
    results = []
    for chunked in (True, False):
        # SGD: Adam's first step is lr * g / (|g| + eps), which turns 1e-8 gradient noise into lr-sized changes
        tr = _trainer(tiny, tmp_path / str(chunked), lora=lora, entropy_coef=0.05, learning_rate=0.1, optim="sgd",
                      logging_steps=1, seed=7)
        tr.chunked_logprobs = chunked
        calls = []
        orig = tr._chunked_logps_and_entropies
        tr._chunked_logps_and_entropies = lambda *a, **k: calls.append(1) or orig(*a, **k)
        tr.train()
        assert bool(calls) == chunked
        log = next(h for h in tr.state.log_history if "loss" in h)
        results.append(((log["loss"], log["grad_norm"]), {n: q.detach().clone() for n, q in tr.model.named_parameters() if q.requires_grad}))
    (loss_a, params_a), (loss_b, params_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5, rel=1e-5)  # (loss, grad norm)
    assert loss_a[0] != 0.0 and loss_a[1] > 0.0
    base = {n: q for n, q in copy.deepcopy(tiny[0]).named_parameters()}
    moved = False
    for name in params_a:
        _close(params_a[name], params_b[name])
        key = name.replace("base_model.model.", "")
        moved |= key in base and not torch.equal(params_a[name], base[key])
    assert moved or lora  # full fine-tuning: the step changed the weights


def test_falls_back_to_trl(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path)
    p, pm, c, cm = _batch()
    ids, att = torch.cat([p, c], 1), torch.cat([pm, cm], 1)
    seen = []
    orig = GRPOTrainer._get_per_token_logps_and_entropies

    def spy(self, *a, **k):
        seen.append(k)
        return orig(self, *a, **k)

    with mock.patch.object(GRPOTrainer, "_get_per_token_logps_and_entropies", spy), torch.no_grad():
        tr._get_per_token_logps_and_entropies(tr.model, ids, att, c.size(1))
        assert not seen
        tr._get_per_token_logps_and_entropies(tr.model, ids, att, c.size(1), token_type_ids=torch.zeros_like(ids))
        assert "token_type_ids" in seen[-1]
        assert "multimodal" in tr.chunked_logprobs_fallback(tr.model, multimodal={"pixel_values": ids})
        assert "aux loss" in tr.chunked_logprobs_fallback(tr.model, compute_aux_loss=True)
        tr.chunked_logprobs = False
        tr._get_per_token_logps_and_entropies(tr.model, ids, att, c.size(1))
        assert len(seen) == 2
        tr.chunked_logprobs = True
        base = tr.accelerator.unwrap_model(tr.model)
        base.config.final_logit_softcapping = 30.0
        try:
            assert "final_logit_softcapping" in tr.chunked_logprobs_fallback(tr.model)
        finally:
            del base.config.final_logit_softcapping


def test_bench_quick_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_grpo_step_memory.py"), "--quick"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ours/TRL" in out.stdout and "peak" in out.stdout
