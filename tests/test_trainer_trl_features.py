"""With a token strategy configured, every TRL 1.16 GRPO loss feature still works and, with neutral weights, gives
exactly TRL's own ``_compute_loss`` (value and gradient) on the same real batch of the tiny model: every loss_type,
the off-policy mask, vLLM importance-sampling correction, the entropy bonus (static and adaptive), TRL's
top_entropy_quantile mask; non-neutral weights change the loss."""
import copy

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from posttrain.data import arithmetic_problems
from posttrain.models import load_tiny_model
from posttrain.recipes.schema import StrategySpec, WeightingSection
from posttrain.rewards.base import completion_text
from posttrain.trainers import PosttrainGRPOTrainer

G = 4
ONES = "tests.user_strategies.grpo_kinds:OnesTokenWeights"


def text_length(completions, **kw):
    return [min(len(completion_text(c)), 40) / 40.0 for c in completions]


@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    return load_tiny_model()


def _trainer(tiny, tmp_path, tokens, **cfg):
    model, tok = tiny
    args = dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2 * G, num_generations=G,
                max_completion_length=6, use_cpu=True, bf16=False, report_to="none", max_steps=1,
                gradient_checkpointing=False, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                disable_tqdm=True, seed=0, temperature=1.0, beta=0.0, loss_type="dapo")
    args.update(cfg)
    tr = PosttrainGRPOTrainer(model=copy.deepcopy(model), reward_funcs=[text_length], args=GRPOConfig(**args),
                              train_dataset=arithmetic_problems(32, low=1, high=9), processing_class=tok,
                              weighting=WeightingSection(tokens=[StrategySpec(name=n) for n in tokens]))
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


def _batch(tr):
    ds = arithmetic_problems(8, low=1, high=9, seed=3)
    torch.manual_seed(0)
    out = tr._generate_and_score_completions([dict(ds[i]) for i in range(2) for _ in range(G)])
    g = torch.Generator().manual_seed(1)
    # a batch that is off-policy and has a sampling-engine mismatch, so every feature has something to act on
    with torch.no_grad():
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        att = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        logps, _, _ = tr._get_per_token_logps_and_entropies(tr.model, ids, att, out["completion_ids"].size(1))
    out["old_per_token_logps"] = logps + 0.3 * torch.randn(logps.shape, generator=g)
    out["sampling_per_token_logps"] = out["old_per_token_logps"] + 0.2 * torch.randn(logps.shape, generator=g)
    out["importance_sampling_ratio"] = torch.rand(logps.shape, generator=g) + 0.5
    out["advantages"] = torch.randn(out["advantages"].shape, generator=g)
    return out


def _loss_and_grads(fn, tr, inputs):
    tr.model.zero_grad()
    loss = fn(tr, tr.model, inputs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]


FEATURES = [
    {"loss_type": t} for t in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo", "luspo")
] + [
    {"loss_type": "dapo", "off_policy_mask_threshold": 0.05},
    {"loss_type": "grpo", "vllm_is": True},
    {"loss_type": "dapo", "vllm_is": True, "importance_sampling_level": "sequence"},
    {"loss_type": "dapo", "entropy_coef": 0.05},
    {"loss_type": "grpo", "entropy_coef": 0.05, "top_entropy_quantile": 0.5},
    {"loss_type": "bnpo", "beta": 0.0, "delta": 1.5, "epsilon_high": 0.28},
]


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_neutral_token_weights_give_trls_loss_for_every_feature(tiny, tmp_path, feature):
    feature = dict(feature)
    vllm_is = feature.pop("vllm_is", False)
    tr = _trainer(tiny, tmp_path, [ONES], **feature)
    inputs = _batch(tr)
    if vllm_is:  # the update side of a vLLM run (the batch itself was generated with HF generate)
        tr.use_vllm, tr.vllm_importance_sampling_correction = True, True
    ours, g_ours = _loss_and_grads(PosttrainGRPOTrainer._compute_loss, tr, inputs)
    trls, g_trl = _loss_and_grads(GRPOTrainer._compute_loss, tr, inputs)
    assert ours.abs() > 0
    assert torch.allclose(ours, trls, rtol=1e-5, atol=1e-7), (ours, trls)
    assert len(g_ours) == len(g_trl) > 0
    for a, b in zip(g_ours, g_trl):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_adaptive_entropy_controller_moves_as_trls(tiny, tmp_path):
    cfg = dict(loss_type="dapo", use_adaptive_entropy=True, entropy_coef=0.1, entropy_target=100.0,
               entropy_coef_delta=0.01)
    ours_tr, trl_tr = _trainer(tiny, tmp_path / "a", [ONES], **cfg), _trainer(tiny, tmp_path / "b", [ONES], **cfg)
    inputs = _batch(ours_tr)
    for _ in range(2):
        PosttrainGRPOTrainer._compute_loss(ours_tr, ours_tr.model, inputs)
        GRPOTrainer._compute_loss(trl_tr, trl_tr.model, inputs)
    assert ours_tr.entropy_coef == pytest.approx(trl_tr.entropy_coef) and ours_tr.entropy_coef == pytest.approx(0.12)
    assert ours_tr._last_world_entropy == pytest.approx(trl_tr._last_world_entropy)


def test_non_neutral_weights_change_the_loss_with_every_feature(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, ["high_entropy"], loss_type="cispo", off_policy_mask_threshold=0.05,
                  entropy_coef=0.05)
    inputs = _batch(tr)
    ours, _ = _loss_and_grads(PosttrainGRPOTrainer._compute_loss, tr, inputs)
    trls, _ = _loss_and_grads(GRPOTrainer._compute_loss, tr, inputs)
    assert not torch.allclose(ours, trls)
