"""Parity with TRL 1.16: our losses equal the ones TRL's own trainer code computes (fp64, <= 1e-6).

GRPO: a real ``trl.GRPOTrainer`` (tiny random Llama, offline word-level tokenizer) runs its own
``_compute_loss(model, inputs)``; only ``_get_per_token_logps_and_entropies`` is patched to return fixed per-token
log-probs, so TRL's ratio, clipping, KL and aggregation code is what runs. Loss values and gradients w.r.t. the
log-probs are compared.

DPO: a real ``trl.DPOTrainer`` runs its own ``_compute_loss(model, inputs, return_outputs=False)`` with a stub
policy whose fused-head output carries fixed per-token log-probs, and precomputed reference log-probs.
"""
import copy
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

from posttrain.losses import dpo_loss, policy_loss  # noqa: E402

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


def _trl_grpo_loss(trainer, logps, old, ref, adv, mask, entropies):
    logps = logps.clone().requires_grad_()
    inputs = {
        "prompt_ids": torch.ones(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.full((B, T), 5, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),  # one process, grad accum 1 = steps_per_generation 1
    }
    with mock.patch.object(trainer, "_get_per_token_logps_and_entropies", return_value=(logps, entropies, None)):
        loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), logps.grad


def _configure(trainer, loss_type, beta, level="token", eps=(0.2, 0.2), delta=None, top_entropy_quantile=1.0,
               bias_correction=True):
    trainer.loss_type, trainer.beta, trainer.importance_sampling_level = loss_type, beta, level
    trainer.args.use_bias_correction_kl = bias_correction  # TRL 1.16's default is True
    trainer.epsilon_low, trainer.epsilon_high = eps
    trainer.args.delta = delta
    trainer.top_entropy_quantile = top_entropy_quantile


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
