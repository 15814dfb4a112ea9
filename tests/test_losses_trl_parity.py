"""Parity with TRL 1.16: our losses equal the ones TRL's own trainer code computes (fp64, <= 1e-6).

GRPO: a real ``trl.GRPOTrainer`` (tiny random Llama, offline word-level tokenizer) runs its own
``_compute_loss(model, inputs)``; only ``_get_per_token_logps_and_entropies`` is patched to return fixed per-token
log-probs (and entropies), so TRL's ratio, clipping, KL and aggregation code is what runs. Loss values and gradients
w.r.t. the log-probs (and the entropies, for the entropy bonus) are compared, for every TRL ``loss_type`` with the
off-policy sequence mask, the vLLM importance-sampling correction and the (adaptive) entropy bonus; our
``trl_scaled_loss`` applies TRL's accumulation / DAPO normalisers.

DPO: a real ``trl.DPOTrainer`` runs its own ``_compute_loss(model, inputs, return_outputs=False)`` with a stub
policy whose fused-head output carries fixed per-token log-probs, and precomputed reference log-probs.
"""
import copy
import math
import os
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

from posttrain.losses import (  # noqa: E402
    TRL_LOSS_TYPES,
    AdaptiveEntropyCoef,
    dpo_loss,
    entropy_bonus,
    policy_loss,
    trl_scaled_loss,
    vllm_importance_sampling_ratio,
)

F64 = torch.float64
B, T = 4, 6
MAX_COMPLETION_LENGTH = 8  # > T on purpose: dr_grpo divides by the configured maximum, not the batch's T
AGGREGATION = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dapo": "token_mean", "dr_grpo": "dr_grpo"}


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
    return transformers.LlamaForCausalLM(cfg), tokenizer


@pytest.fixture(scope="module")
def grpo_trainer(tmp_path_factory):
    model, tokenizer = _tiny_model_and_tokenizer()
    args = trl.GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("grpo")), report_to=[], bf16=False, use_cpu=True,
        per_device_train_batch_size=B, num_generations=2, max_completion_length=MAX_COMPLETION_LENGTH,
        beta=0.0,  # beta > 0 at init would load a reference model by hub id; we set trainer.beta below instead
        gradient_accumulation_steps=1, steps_per_generation=1, save_strategy="no", logging_steps=1)
    ds = datasets.Dataset.from_dict({"prompt": ["w1 w2", "w3 w4"]})
    trainer = trl.GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=args, train_dataset=ds, processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop in real runs
    assert trainer.accelerator.num_processes == 1 and trainer.model.training
    return trainer


def _grpo_tensors(seed, token_advantages=False):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 4:] = 0  # ragged completions
    mask[2, 1:] = 0
    logps = -2 * torch.rand(B, T, generator=g, dtype=F64)
    old = logps + 0.3 * torch.randn(B, T, generator=g, dtype=F64)  # ratios well outside [0.8, 1.2] too
    ref = logps + 0.2 * torch.randn(B, T, generator=g, dtype=F64)
    adv = torch.randn(B, T, generator=g, dtype=F64) if token_advantages else torch.randn(B, generator=g, dtype=F64)
    entropies = 3 * torch.rand(B, T, generator=g, dtype=F64)
    return logps, old, ref, adv, mask, entropies


def _trl_grpo_loss(trainer, logps, old, ref, adv, mask, entropies, extra_inputs=None, num_items=None,
                   entropy_grad=False):
    logps = logps.clone().requires_grad_()
    entropies = entropies.clone().requires_grad_(entropy_grad)
    inputs = {
        "prompt_ids": torch.ones(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.full((B, T), 5, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        # default: one process, grad accum 1 = steps_per_generation 1
        "num_items_in_batch": mask.sum() if num_items is None else num_items,
        **(extra_inputs or {}),
    }
    with mock.patch.object(trainer, "_get_per_token_logps_and_entropies", return_value=(logps, entropies, None)):
        loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    if entropy_grad:
        return loss.detach(), logps.grad, entropies.grad
    return loss.detach(), logps.grad


def _configure(trainer, loss_type, beta, level="token", eps=(0.2, 0.2), delta=None, top_entropy_quantile=1.0,
               bias_correction=True, off_policy_mask_threshold=None, vllm_is=False, entropy_coef=0.0,
               adaptive_entropy=False, accumulation=1, steps_per_generation=1, sapo=(1.0, 1.05),
               vespo=(2.0, 3.0, 3.0, 2.0)):
    """Set every attribute ``_compute_loss`` reads (the fixture is shared: each test sets all of them)."""
    trainer.loss_type, trainer.beta, trainer.importance_sampling_level = loss_type, beta, level
    trainer.args.use_bias_correction_kl = bias_correction  # TRL 1.16's default is True
    trainer.epsilon_low, trainer.epsilon_high = eps
    trainer.args.delta = delta
    trainer.top_entropy_quantile = top_entropy_quantile
    trainer.off_policy_mask_threshold = off_policy_mask_threshold
    trainer.use_vllm = trainer.vllm_importance_sampling_correction = vllm_is
    trainer.entropy_coef, trainer.use_adaptive_entropy = entropy_coef, adaptive_entropy
    trainer._entropy_bonus_enabled = entropy_coef != 0.0 or adaptive_entropy
    trainer._last_world_entropy, trainer._entropy_window_stats = float("inf"), None
    trainer.current_gradient_accumulation_steps = accumulation
    trainer.args.steps_per_generation = steps_per_generation
    trainer.args.sapo_temperature_pos, trainer.args.sapo_temperature_neg = sapo
    (trainer.args.vespo_k_pos, trainer.args.vespo_lambda_pos, trainer.args.vespo_k_neg,
     trainer.args.vespo_lambda_neg) = vespo
    trainer.accelerator.gradient_state._set_sync_gradients(True)


def _ours_kwargs(trainer):
    """The policy_loss arguments that reproduce the trainer's configured loss type (what our trainer passes)."""
    lt, args = trainer.loss_type, trainer.args
    kw = dict(TRL_LOSS_TYPES[lt], clip_low=trainer.epsilon_low, clip_high=trainer.epsilon_high, kl_coef=trainer.beta,
              kl_bias_correction=bool(args.use_bias_correction_kl), max_len=trainer.max_completion_length,
              delta=args.delta, off_policy_mask_threshold=trainer.off_policy_mask_threshold)
    if lt == "cispo":
        kw.update(clip_low=None, cispo_clip_max=trainer.epsilon_high)
    if lt == "sapo":
        kw.update(sapo_temperature_pos=args.sapo_temperature_pos, sapo_temperature_neg=args.sapo_temperature_neg)
    if lt == "vespo":
        kw.update(vespo_k_pos=args.vespo_k_pos, vespo_lambda_pos=args.vespo_lambda_pos,
                  vespo_k_neg=args.vespo_k_neg, vespo_lambda_neg=args.vespo_lambda_neg)
    return kw


def _ours_scaled(trainer, loss, mask, num_items, bonus=None):
    return trl_scaled_loss(loss, trainer.loss_type, local_tokens=(mask * 1.0).sum(), num_items_in_batch=num_items,
                           num_processes=1, gradient_accumulation_steps=trainer.current_gradient_accumulation_steps,
                           steps_per_generation=trainer.args.steps_per_generation, training=True,
                           entropy_bonus=bonus)


def _assert_close(ours, theirs):
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


GRPO_CASES = [  # (loss_type, beta, importance level, TRL use_bias_correction_kl); the flag only matters if beta > 0
    (lt, beta, level, bc)
    for lt in ["grpo", "dapo", "dr_grpo", "bnpo"]
    for level in ["token", "sequence"]
    for beta, bc in [(0.0, True), (0.04, True), (0.04, False)]
]


@pytest.mark.parametrize("loss_type,beta,level,bias_correction", GRPO_CASES)
def test_grpo_family_matches_trl(grpo_trainer, loss_type, beta, level, bias_correction):
    seed = ["grpo", "dapo", "dr_grpo", "bnpo"].index(loss_type) + 10 * (level == "sequence") + 100 * (beta > 0)
    logps, old, ref, adv, mask, ent = _grpo_tensors(seed=seed)
    _configure(grpo_trainer, loss_type, beta, level, eps=(0.2, 0.28), bias_correction=bias_correction)
    trl_loss, trl_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent)

    ours_logps = logps.clone().requires_grad_()
    loss, _ = policy_loss(ours_logps, old, adv, mask, ref_logps=ref, kl_coef=beta, clip_low=0.2, clip_high=0.28,
                          aggregation=AGGREGATION[loss_type], max_len=MAX_COMPLETION_LENGTH, importance_level=level,
                          kl_bias_correction=bias_correction)
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_logps.grad, trl_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_token_advantages_delta_and_entropy_mask_match_trl(grpo_trainer, loss_type):
    """[B, T] advantages, TRL's two-sided ``delta``, and TRL's entropy mask passed to us as token weights (KL not
    gated by it in either)."""
    logps, old, ref, adv, mask, ent = _grpo_tensors(seed=7, token_advantages=True)
    _configure(grpo_trainer, loss_type, 0.1, eps=(0.2, 0.2), delta=1.5, top_entropy_quantile=0.5)
    trl_loss, trl_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent)
    weights = grpo_trainer.get_high_entropy_mask(ent, mask, 1 - 0.5).to(F64)
    assert 0 < weights.sum() < mask.sum()

    ours_logps = logps.clone().requires_grad_()
    loss, m = policy_loss(ours_logps, old, adv, mask, ref_logps=ref, kl_coef=0.1, delta=1.5,
                          token_weights=weights, aggregation=AGGREGATION[loss_type], kl_bias_correction=True)
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_logps.grad, trl_grad, rtol=0, atol=1e-6)
    assert m["weighted_token_frac"].item() == pytest.approx((weights.sum() / mask.sum()).item())


def test_clip_metrics_match_trl(grpo_trainer):
    logps, old, ref, adv, mask, ent = _grpo_tensors(seed=11)
    _configure(grpo_trainer, "bnpo", 0.04, bias_correction=False)  # TRL logs the corrected KL otherwise
    grpo_trainer._metrics["train"].clear()
    _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent)
    trl_metrics = {k: v[-1] for k, v in grpo_trainer._metrics["train"].items()}
    _, m = policy_loss(logps, old, adv, mask, ref_logps=ref, kl_coef=0.04)
    assert m["clip_frac_low"].item() == pytest.approx(trl_metrics["clip_ratio/low_mean"])
    assert m["clip_frac_high"].item() == pytest.approx(trl_metrics["clip_ratio/high_mean"])
    assert m["clip_frac"].item() == pytest.approx(trl_metrics["clip_ratio/region_mean"])
    assert m["kl"].item() == pytest.approx(trl_metrics["kl"])


ALL_LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo", "luspo"]


def test_trl_loss_types_table_is_complete():
    loss_type_help = trl.GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert set(TRL_LOSS_TYPES) == set(ALL_LOSS_TYPES)
    assert all(f"'{lt}'" in loss_type_help for lt in ALL_LOSS_TYPES)


@pytest.mark.parametrize("loss_type", ALL_LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_every_loss_type_matches_trl(grpo_trainer, loss_type, level, beta):
    """Every TRL 1.16 loss_type (cispo with ScaleRL's eps_max, non-default SAPO temperatures and VESPO k / lambda),
    with TRL's accumulation and generation-batch normalisers (accum 2, generation batch 3x the micro-batch)."""
    seed = 1000 + ALL_LOSS_TYPES.index(loss_type) + 10 * (level == "sequence") + 100 * (beta > 0)
    logps, old, ref, adv, mask, ent = _grpo_tensors(seed=seed)
    eps = (0.2, 1.25) if loss_type == "cispo" else (0.2, 0.28)  # cispo: epsilon_high is the ratio cap itself
    _configure(grpo_trainer, loss_type, beta, level, eps=eps, accumulation=2, steps_per_generation=2,
               sapo=(0.8, 1.3), vespo=(1.5, 2.5, 2.5, 1.5))
    num_items = 3 * mask.sum()
    grpo_trainer._metrics["train"].clear()
    trl_loss, trl_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent, num_items=num_items)

    ours_logps = logps.clone().requires_grad_()
    loss, m = policy_loss(ours_logps, old, adv, mask, ref_logps=ref, importance_level=level,
                          **_ours_kwargs(grpo_trainer))
    loss = _ours_scaled(grpo_trainer, loss, mask, num_items)
    loss.backward()
    _assert_close(loss.detach(), trl_loss)
    _assert_close(ours_logps.grad, trl_grad)
    trl_metrics = {k: v[-1] for k, v in grpo_trainer._metrics["train"].items()}
    if loss_type == "cispo" and level == "token":  # TRL averages sequence-level metrics over sequences
        assert 0 < m["clip_frac_high"].item() == pytest.approx(trl_metrics["cispo_clip_ratio"])
    if loss_type == "vespo":
        assert m["vespo_phi_mean"].item() == pytest.approx(trl_metrics["vespo/phi_seq_mean"])


@pytest.mark.parametrize("loss_type", ["grpo", "cispo", "sapo", "vespo"])
def test_new_surrogates_with_token_advantages_and_entropy_mask_match_trl(grpo_trainer, loss_type):
    """[B, T] advantages and TRL's entropy mask passed to us as token weights, for the non-PPO surrogates."""
    logps, old, ref, adv, mask, ent = _grpo_tensors(seed=21, token_advantages=True)
    _configure(grpo_trainer, loss_type, 0.1, eps=(0.2, 1.3) if loss_type == "cispo" else (0.2, 0.2),
               top_entropy_quantile=0.5)
    trl_loss, trl_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent)
    weights = grpo_trainer.get_high_entropy_mask(ent, mask, 1 - 0.5).to(F64)
    ours_logps = logps.clone().requires_grad_()
    loss, _ = policy_loss(ours_logps, old, adv, mask, ref_logps=ref, token_weights=weights,
                          **_ours_kwargs(grpo_trainer))
    loss = _ours_scaled(grpo_trainer, loss, mask, mask.sum())
    loss.backward()
    _assert_close(loss.detach(), trl_loss)
    _assert_close(ours_logps.grad, trl_grad)


def _off_policy_case(seed):
    logps, old, ref, _, mask, ent = _grpo_tensors(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    # per-row drift of the sampler: rows 0 and 2 are far off-policy (mean KL 0.5 / 0.8 > threshold 0.3)
    offsets = torch.tensor([0.5, -0.2, 0.8, 0.45], dtype=F64).unsqueeze(1)
    sampling = logps + offsets + 0.05 * torch.randn(B, T, generator=g, dtype=F64)
    sampling[1, 2] = float("nan")  # a token vLLM could not score: no KL evidence
    sampling[0, 5] = float("-inf")  # padding
    adv = torch.tensor([-0.7, -0.4, -1.1, 0.9], dtype=F64)  # row 3 is off-policy but A >= 0: kept
    return logps, old, ref, adv, mask, ent, sampling


@pytest.mark.parametrize("loss_type", ALL_LOSS_TYPES)
@pytest.mark.parametrize("with_sampling", [True, False])
def test_off_policy_mask_matches_trl(grpo_trainer, loss_type, with_sampling):
    """DeepSeek-V3.2's off-policy sequence mask against TRL's get_off_policy_mask inside _compute_loss; without
    sampling log-probs both fall back to old_per_token_logps."""
    logps, old, ref, adv, mask, ent, sampling = _off_policy_case(seed=31 + ALL_LOSS_TYPES.index(loss_type))
    level = "sequence" if loss_type == "luspo" else "token"
    _configure(grpo_trainer, loss_type, 0.04, level, eps=(0.2, 1.3) if loss_type == "cispo" else (0.2, 0.28),
               off_policy_mask_threshold=0.3)
    extra = {"sampling_per_token_logps": sampling} if with_sampling else {}
    trl_loss, trl_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent, extra_inputs=extra)

    ours_logps = logps.clone().requires_grad_()
    loss, m = policy_loss(ours_logps, old, adv, mask, ref_logps=ref, importance_level=level,
                          sampling_logps=sampling if with_sampling else None, **_ours_kwargs(grpo_trainer))
    loss = _ours_scaled(grpo_trainer, loss, mask, mask.sum())
    loss.backward()
    _assert_close(loss.detach(), trl_loss)
    _assert_close(ours_logps.grad, trl_grad)
    if with_sampling:  # rows 0 (4 tokens) and 2 (1 token) dropped out of 4 + 6 + 1 + 6 valid tokens
        assert m["off_policy_masked_frac"].item() == pytest.approx(5 / 17)


IS_CASES = [(lt, mode) for lt in ALL_LOSS_TYPES
            for mode in ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
            if not (lt == "vespo" and mode.startswith("sequence"))]  # TRL refuses VESPO with sequence modes


@pytest.mark.parametrize("loss_type,mode", IS_CASES)
def test_vllm_importance_sampling_correction_matches_trl(grpo_trainer, loss_type, mode):
    """TRL's vLLM IS correction: our ratio helper's output as inputs["importance_sampling_ratio"], multiplying the
    per-token loss (VESPO: inside its Gamma weight), with the off-policy mask too."""
    logps, old, ref, adv, mask, ent, sampling = _off_policy_case(seed=41 + ALL_LOSS_TYPES.index(loss_type))
    scale = 1.0 if mode.startswith("token") else 0.25  # sequence ratios multiply: a sampler closer to old
    sampling = old + scale * (sampling - logps - 0.3)
    rho = vllm_importance_sampling_ratio(old, sampling, mask, mode=mode, clip_min=0.8, clip_max=1.2)
    bounded = (rho == 0) if mode.endswith("mask") else (rho == 0.8) | (rho == 1.2)
    assert 0 < bounded.expand_as(mask)[mask > 0].sum() < mask.sum()  # some ratios inside the bounds, some out
    level = "sequence" if loss_type == "luspo" else "token"
    _configure(grpo_trainer, loss_type, 0.04, level, eps=(0.2, 1.3) if loss_type == "cispo" else (0.2, 0.28),
               vllm_is=True, off_policy_mask_threshold=0.3)
    extra = {"sampling_per_token_logps": sampling, "importance_sampling_ratio": rho}
    trl_loss, trl_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent, extra_inputs=extra)

    # a [B, T] ratio with a sequence-level importance ratio needs TRL's shared-gradient form
    our_level = "sequence_shared" if level == "sequence" and mode.startswith("token") else level
    ours_logps = logps.clone().requires_grad_()
    loss, m = policy_loss(ours_logps, old, adv, mask, ref_logps=ref, importance_level=our_level,
                          sampling_logps=sampling, importance_sampling_ratio=rho, **_ours_kwargs(grpo_trainer))
    loss = _ours_scaled(grpo_trainer, loss, mask, mask.sum())
    loss.backward()
    _assert_close(loss.detach(), trl_loss)
    _assert_close(ours_logps.grad, trl_grad)
    assert "is_ratio_mean" in m


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "luspo"])
def test_gspo_form_differs_from_trl_only_with_token_multipliers(grpo_trainer, loss_type):
    """importance_level="sequence" (GSPO-token) and "sequence_shared" (TRL's form) agree in value; with a [B, T]
    IS ratio only "sequence_shared" has TRL's gradient."""
    logps, old, ref, adv, mask, ent, sampling = _off_policy_case(seed=51)
    rho = vllm_importance_sampling_ratio(old, old + 0.1 * (sampling - logps - 0.3), mask, mode="token_truncate",
                                         clip_min=0.95, clip_max=1.05)
    _configure(grpo_trainer, loss_type, 0.0, "sequence", vllm_is=True)
    trl_loss, trl_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent,
                                        extra_inputs={"importance_sampling_ratio": rho})
    grads = {}
    for level in ["sequence", "sequence_shared"]:
        ours_logps = logps.clone().requires_grad_()
        loss, _ = policy_loss(ours_logps, old, adv, mask, importance_level=level, importance_sampling_ratio=rho,
                              **_ours_kwargs(grpo_trainer))
        loss = _ours_scaled(grpo_trainer, loss, mask, mask.sum())
        loss.backward()
        _assert_close(loss.detach(), trl_loss)
        grads[level] = ours_logps.grad
    _assert_close(grads["sequence_shared"], trl_grad)
    assert (grads["sequence"] - trl_grad).abs().max() > 1e-4


@pytest.mark.parametrize("loss_type", ALL_LOSS_TYPES)
@pytest.mark.parametrize("top_entropy_quantile", [1.0, 0.5])
def test_entropy_bonus_matches_trl(grpo_trainer, loss_type, top_entropy_quantile):
    """Static entropy bonus: value and gradients w.r.t. log-probs and entropies, with accumulation 2 and a generation
    batch 3x the micro-batch (the bonus is divided by the accumulation only, never by the DAPO normaliser), over
    TRL's effective mask (its top-entropy mask when set)."""
    logps, old, ref, adv, mask, ent = _grpo_tensors(seed=61 + ALL_LOSS_TYPES.index(loss_type))
    _configure(grpo_trainer, loss_type, 0.04, eps=(0.2, 1.3) if loss_type == "cispo" else (0.2, 0.28),
               entropy_coef=0.07, accumulation=2, steps_per_generation=2, top_entropy_quantile=top_entropy_quantile)
    num_items = 3 * mask.sum()
    trl_loss, trl_grad, trl_ent_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent,
                                                      num_items=num_items, entropy_grad=True)
    emask = None
    if top_entropy_quantile < 1.0:
        emask = grpo_trainer.get_high_entropy_mask(ent, mask, 1 - top_entropy_quantile).to(F64)
    ours_logps, ours_ent = logps.clone().requires_grad_(), ent.clone().requires_grad_()
    loss, m = policy_loss(ours_logps, old, adv, mask, ref_logps=ref, token_weights=emask, entropies=ours_ent,
                          entropy_coef=0.07, entropy_mask=emask, **_ours_kwargs(grpo_trainer))
    bonus = entropy_bonus(ours_ent, mask if emask is None else mask * emask, 0.07)
    loss = _ours_scaled(grpo_trainer, loss, mask, num_items, bonus=bonus)
    loss.backward()
    _assert_close(loss.detach(), trl_loss)
    _assert_close(ours_logps.grad, trl_grad)
    _assert_close(ours_ent.grad, trl_ent_grad)
    assert m["entropy_bonus"].item() == pytest.approx(bonus.item())


@pytest.mark.parametrize("last_entropy,coef", [(float("inf"), 0.1), (0.9, 0.1), (1.6, 0.1), (0.5, 0.998)])
def test_adaptive_entropy_controller_matches_trl(grpo_trainer, last_entropy, coef):
    """TRL's adaptive controller over a 2-micro-batch window: the applied coefficient (gated on the previous step's
    entropy), the window-global entropy at the step boundary, and the clamped update; then a second window."""
    ctrl = AdaptiveEntropyCoef(coef, target=1.5, delta=0.01, coef_min=0.0, coef_max=1.0)
    ctrl.last_world_entropy = last_entropy
    _configure(grpo_trainer, "dapo", 0.0, entropy_coef=coef, adaptive_entropy=True, accumulation=2,
               steps_per_generation=2)
    grpo_trainer._last_world_entropy = last_entropy
    args = grpo_trainer.args
    args.entropy_target, args.entropy_coef_delta, args.entropy_coef_min, args.entropy_coef_max = 1.5, 0.01, 0.0, 1.0
    for window in range(2):
        for micro in range(2):  # entropies scaled so the window crosses the target both ways
            logps, old, ref, adv, mask, ent = _grpo_tensors(seed=71 + 2 * window + micro)
            ent = ent * (0.4 if window == 0 else 1.2)
            grpo_trainer.accelerator.gradient_state._set_sync_gradients(micro == 1)
            num_items = 2 * mask.sum()
            trl_loss, _, trl_ent_grad = _trl_grpo_loss(grpo_trainer, logps, old, ref, adv, mask, ent,
                                                       num_items=num_items, entropy_grad=True)
            ours_ent = ent.clone().requires_grad_()
            applied = ctrl.applied_coef
            loss, _ = policy_loss(logps, old, adv, mask, entropies=ours_ent, entropy_coef=applied,
                                  **_ours_kwargs(grpo_trainer))
            loss = _ours_scaled(grpo_trainer, loss, mask, num_items, bonus=entropy_bonus(ours_ent, mask, applied))
            loss.backward()
            _assert_close(loss.detach(), trl_loss)
            _assert_close(ours_ent.grad, trl_ent_grad)
            ctrl.observe(ent, mask)
        ctrl.end_window()
        assert ctrl.coef == pytest.approx(grpo_trainer.entropy_coef, abs=1e-12)
        assert ctrl.last_world_entropy == pytest.approx(grpo_trainer._last_world_entropy, abs=1e-12)
        assert ctrl.state_dict() == pytest.approx({"entropy_coef": grpo_trainer.entropy_coef,
                                                   "last_world_entropy": grpo_trainer._last_world_entropy})
    grpo_trainer.accelerator.gradient_state._set_sync_gradients(True)


# TRL 1.16's vLLM IS ratio, transcribed from GRPOTrainer._generate_and_score_completions (the source check below
# fails if TRL's code changes, so the transcription cannot silently drift).
def _trl_is_ratio_transcription(old_per_token_logps, sampling_per_token_logps, mask, mode, clip_min, clip_max):
    per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask
    per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)
    sequence_level_is = mode in ["sequence_mask", "sequence_truncate"]
    if sequence_level_is:
        per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
        logps_diff = per_sequence_logps_diff
    else:
        logps_diff = per_token_logps_diff
    vllm_importance_sampling_ratio = torch.exp(logps_diff)
    if mode in ["sequence_truncate", "token_truncate"]:
        vllm_importance_sampling_ratio = torch.clamp(vllm_importance_sampling_ratio, min=clip_min, max=clip_max)
    elif mode in ["sequence_mask", "token_mask"]:
        min_val = clip_min if clip_min is not None else -math.inf
        max_val = clip_max if clip_max is not None else math.inf
        invalid_mis_mask = (vllm_importance_sampling_ratio < min_val) | (vllm_importance_sampling_ratio > max_val)
        vllm_importance_sampling_ratio = vllm_importance_sampling_ratio.masked_fill(invalid_mis_mask, value=0.0)
    return vllm_importance_sampling_ratio


def test_is_ratio_transcription_is_trl_source():
    import inspect
    import re

    src = re.sub(r"\s+", "", inspect.getsource(trl.GRPOTrainer._generate_and_score_completions))
    for line in [
        "per_token_logps_diff=(old_per_token_logps-sampling_per_token_logps)*mask",
        "per_token_logps_diff=torch.nan_to_num(per_token_logps_diff,nan=0.0)",
        'sequence_level_is=self.vllm_importance_sampling_modein["sequence_mask","sequence_truncate"]',
        "per_sequence_logps_diff=per_token_logps_diff.sum(dim=-1,keepdim=True)",
        "vllm_importance_sampling_ratio=torch.exp(logps_diff)",
        "min=self.vllm_importance_sampling_clip_min,max=self.vllm_importance_sampling_clip_max,",
        "else-math.inf", "elsemath.inf",
        "invalid_mis_mask=(vllm_importance_sampling_ratio<min_val)|(vllm_importance_sampling_ratio>max_val)",
        "vllm_importance_sampling_ratio.masked_fill(invalid_mis_mask,value=0.0)",
    ]:
        assert line in src, line


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("clip_min,clip_max", [(None, 3.0), (0.5, 2.0), (0.9, None), (0.97, 1.02)])
def test_is_ratio_helper_matches_trl(mode, clip_min, clip_max):
    g = torch.Generator().manual_seed(5)
    old = -2 * torch.rand(B, T, generator=g, dtype=F64)
    sampling = old + 0.1 * torch.randn(B, T, generator=g, dtype=F64)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    sampling[1, 3] = float("nan")  # unscored token
    sampling[0, 5] = old[0, 5] = float("-inf")  # padding
    ours = vllm_importance_sampling_ratio(old, sampling, mask, mode=mode, clip_min=clip_min, clip_max=clip_max)
    theirs = _trl_is_ratio_transcription(old, sampling, mask, mode, clip_min, clip_max)
    assert ours.shape == theirs.shape == ((B, 1) if mode.startswith("sequence") else (B, T))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ DPO
P, L = 3, 7  # pairs, sequence length (prompt + completion)


@pytest.fixture(scope="module")
def dpo_trainer(tmp_path_factory):
    model, tokenizer = _tiny_model_and_tokenizer()
    args = trl.DPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), report_to=[], bf16=False, use_cpu=True,
                         per_device_train_batch_size=P, save_strategy="no", beta=0.1)
    ds = datasets.Dataset.from_dict({"prompt": ["w1 w2"] * 2, "chosen": [" w3"] * 2, "rejected": [" w4"] * 2})
    trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=ds,
                             processing_class=tokenizer)
    trainer.precompute_ref_logps = True  # reference log-probs come from the inputs, as with precompute
    return trainer


class _StubPolicy:
    """Stands in for the fused-LM-head model: returns fixed per-token log-probs (zero where the label is -100)."""

    def __init__(self, per_token_logps):
        self.per_token_logps = per_token_logps

    def __call__(self, **kwargs):
        assert kwargs.get("fused_lm_head") is True
        zeros = torch.zeros_like(self.per_token_logps)
        return SimpleNamespace(log_probs=self.per_token_logps, entropy=zeros.detach(), mean_logits=zeros.detach(),
                               is_top1=torch.zeros_like(zeros, dtype=torch.bool), aux_loss=None)


def _dpo_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    completion_mask = torch.zeros(2 * P, L, dtype=torch.long)
    for row, length in enumerate([3, 5, 1, 4, 2, 5]):  # chosen rows 0..2, rejected rows 3..5
        completion_mask[row, L - length:] = 1
    shift_mask = completion_mask[:, 1:]
    per_token = (-3 * torch.rand(2 * P, L - 1, generator=g, dtype=F64)) * shift_mask
    ref = -3 * torch.rand(2 * P, generator=g, dtype=F64) * completion_mask.sum(1)
    return per_token, ref[:P], ref[P:], completion_mask


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_matches_trl(dpo_trainer, loss_type, beta):
    per_token, ref_c, ref_r, completion_mask = _dpo_tensors(seed=int(beta * 10) + len(loss_type))
    dpo_trainer.loss_types, dpo_trainer.loss_weights, dpo_trainer.beta = [loss_type], [1.0], beta
    dpo_trainer.label_smoothing = 0.2 if loss_type == "robust" else 0.0
    trl_logps = per_token.clone().requires_grad_()
    inputs = {"input_ids": torch.full((2 * P, L), 5), "attention_mask": torch.ones(2 * P, L, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    trl_loss = dpo_trainer._compute_loss(_StubPolicy(trl_logps), inputs, return_outputs=False)
    trl_loss.backward()

    ours_logps = per_token.clone().requires_grad_()
    seq = ours_logps.sum(1)
    ref = torch.cat([ref_c, ref_r])
    if loss_type == "ipo":  # TRL length-normalises the log-ratios for IPO; our contract: the caller does
        n = completion_mask.sum(1).clamp(min=1)
        seq, ref = seq / n, ref / n
    losses, cr, rr = dpo_loss(seq[:P], seq[P:], ref[:P], ref[P:], beta=beta, loss_type=loss_type,
                              label_smoothing=dpo_trainer.label_smoothing)
    losses.mean().backward()
    torch.testing.assert_close(losses.mean().detach(), trl_loss.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours_logps.grad, trl_logps.grad, rtol=0, atol=1e-6)
    if loss_type != "ipo":  # TRL logs rewards from the un-normalised log-ratios
        metrics = {k: v[-1] for k, v in dpo_trainer._metrics["train"].items()}
        assert cr.mean().item() == pytest.approx(metrics["rewards/chosen"])
        assert rr.mean().item() == pytest.approx(metrics["rewards/rejected"])


def test_rpo_composition_matches_trl_sigmoid_plus_sft(dpo_trainer):
    """TRL 1.16's RPO: loss_type=["sigmoid", "sft"], loss_weights=[1, alpha] == dpo.mean() + alpha * rpo_nll_term."""
    from posttrain.losses import rpo_nll_term

    per_token, ref_c, ref_r, completion_mask = _dpo_tensors(seed=3)
    dpo_trainer.loss_types, dpo_trainer.loss_weights, dpo_trainer.beta = ["sigmoid", "sft"], [1.0, 0.5], 0.1
    dpo_trainer.label_smoothing = 0.0
    inputs = {"input_ids": torch.full((2 * P, L), 5), "attention_mask": torch.ones(2 * P, L, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    trl_loss = dpo_trainer._compute_loss(_StubPolicy(per_token), inputs, return_outputs=False)
    seq = per_token.sum(1)
    losses, _, _ = dpo_loss(seq[:P], seq[P:], ref_c, ref_r, beta=0.1)
    ours = losses.mean() + 0.5 * rpo_nll_term(per_token[:P], completion_mask[:P, 1:])
    torch.testing.assert_close(ours, trl_loss, rtol=0, atol=1e-6)
