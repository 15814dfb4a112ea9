"""The GRPO trainer's own policy forward through :func:`posttrain.losses.selective_logprobs_and_entropy`.  Glue only.

TRL 1.16's ``GRPOTrainer._get_per_token_logps_and_entropies`` calls the model with ``fused_lm_head=True``
(``trl.trainer.utils.add_fused_lm_head``): the backbone runs, then TRL's ``ChunkedLogProbFunction`` projects the
hidden states through the LM head in tiles.  On CPU (no Triton) TRL scores *every* position (prompt and padding
too) in [4096 x 32768] fp32 tiles with several tile-sized temporaries.  :class:`ChunkedLogprobsMixin` keeps the
same contract but scores only the labelled positions with our torch-only kernel (1024 x 4096 tiles, no [N, V]
tensor in forward or backward): see ``docs/losses.md`` for the measured peak memory and time of a GRPO step.
"""
from __future__ import annotations

import inspect

import torch

from posttrain.losses import selective_logprobs_and_entropy

# Per-call inputs of TRL's method that only vision-language models pass; any of them set -> TRL's own path.
MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                   "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
# Config fields with which TRL's fused head transforms the logits beyond the temperature (add_fused_lm_head).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                     "logits_scaling")


class ChunkedLogprobsMixin:
    """``_get_per_token_logps_and_entropies`` with TRL 1.16's signature and return contract, computed by
    :func:`~posttrain.losses.selective_logprobs_and_entropy` from the decoder's last hidden states.

    Contract (as TRL's): ``(logps [B, logits_to_keep], entropies [B, logits_to_keep] | None, None)``, float32 for
    fp32/bf16/fp16 models; row ``i``, column ``j`` scores ``input_ids[i, T - logits_to_keep + j]`` given what
    precedes it, under ``softmax(logits / self.temperature)``; positions with ``attention_mask == 0`` are 0 (log-prob
    and entropy).  ``batch_size`` rows run per model call.  The model is called through whatever wraps it (DDP,
    the DeepSpeed engine, PEFT), under ``accelerator.autocast()``, with ``use_cache=False`` and ``logits_to_keep=1``
    (the model's own head then projects one position per row); a forward hook on the unwrapped model's
    ``get_decoder()`` takes its ``last_hidden_state``, and the LM head (``get_output_embeddings()``: weight and
    bias, read on every call, so PEFT/LoRA-wrapped heads work) runs in our kernel, in fp32, outside autocast (TRL
    runs its tiles in the autocast dtype unless ``cast_lm_head_to_fp32``).  Entropies carry a gradient (TRL's
    always do) when grad mode is on and ``chunked_entropy_grad`` is True, or, when it is ``None`` (default), when
    the entropy bonus is on (``_entropy_bonus_enabled``: TRL's ``entropy_coef != 0`` or adaptive entropy); otherwise
    they are detached, which lets a frozen head (LoRA) skip the backward recompute.

    Attributes: ``chunked_logprobs`` (default True; False: TRL's path), ``chunked_entropy_grad`` (None/True/False).

    Falls back to TRL's own method (``super()``), unchanged, for: vision/multimodal inputs (any of
    :data:`MULTIMODAL_KEYS` given), the MoE router aux loss (``compute_aux_loss``), prompt-learning PEFT (prefix /
    prompt tuning changes the inputs), models without ``get_decoder`` / ``get_output_embeddings`` (or a head without
    a 2-D ``weight``) or whose ``forward`` takes no ``logits_to_keep``, logit transforms TRL applies besides the
    temperature (Gemma's ``final_logit_softcapping``, ``logit_scale`` / ``output_multiplier`` /
    ``lm_head_multiplier`` / ``logits_scaling``), FSDP2 DTensor heads, and DeepSpeed ZeRO-3 (the partitioned head
    would have to be gathered in our backward too, which ``posttrain.losses`` cannot do without DeepSpeed).
    ``chunked_logprobs_fallback(model, ...)`` returns the reason, or None.
    """

    chunked_logprobs: bool = True
    chunked_entropy_grad: bool | None = None

    def chunked_logprobs_fallback(self, model, compute_aux_loss=False, multimodal=None) -> str | None:
        """Why this call would go to TRL's own path (None: it runs ours)."""
        if not getattr(self, "chunked_logprobs", True):
            return "chunked_logprobs is off"
        if compute_aux_loss:
            return "MoE router aux loss"
        given = [k for k, v in (multimodal or {}).items() if v is not None]
        if given:
            return f"multimodal inputs ({', '.join(given)})"
        base, reason = _backbone(self.accelerator.unwrap_model(model))
        if reason:
            return reason
        text_config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
        for key in _LOGIT_TRANSFORMS:
            value = getattr(text_config, key, None)
            if value is not None and not (key != "final_logit_softcapping" and value == 1):
                return f"logit transform {key}={value}"
        if "logits_to_keep" not in inspect.signature(type(base).forward).parameters:
            return "the model's forward takes no logits_to_keep"
        head = base.get_output_embeddings()
        weight = getattr(head, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return "LM head without a 2-D weight"
        if type(weight).__name__ == "DTensor" or type(getattr(head, "bias", None)).__name__ == "DTensor":
            return "FSDP2 (DTensor) LM head"
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            return "DeepSpeed ZeRO-3 (partitioned LM head)"
        return None

    def _chunked_wants_entropy_grad(self) -> bool:
        forced = getattr(self, "chunked_entropy_grad", None)
        if forced is not None:
            return bool(forced)
        return bool(getattr(self, "_entropy_bonus_enabled", False))

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        if self.chunked_logprobs_fallback(model, compute_aux_loss, multimodal) is not None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)
        from trl.extras.profiling import profiling_context

        with profiling_context(self, "_get_per_token_logps_and_entropies"):
            return self._chunked_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                                     compute_entropy)

    def _chunked_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size,
                                     compute_entropy):
        base, _ = _backbone(self.accelerator.unwrap_model(model))
        decoder = base.get_decoder()
        entropy_grad = compute_entropy and torch.is_grad_enabled() and self._chunked_wants_entropy_grad()
        captured = []

        def keep_hidden(_module, _args, output):
            captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        handle = decoder.register_forward_hook(keep_hidden)
        try:
            for start in range(0, input_ids.size(0), batch_size):
                ids = input_ids[start:start + batch_size]
                att = attention_mask[start:start + batch_size]
                # TRL's labels: only completion tokens, never padding
                labels = ids.masked_fill(att == 0, -100)
                labels[:, :-logits_to_keep] = -100
                captured.clear()
                with self.accelerator.autocast():
                    model(input_ids=ids, attention_mask=att, use_cache=False, logits_to_keep=1)
                if len(captured) != 1:
                    raise RuntimeError(f"the decoder ran {len(captured)} times in one forward (expected once)")
                head = base.get_output_embeddings()
                weight, bias = head.weight, getattr(head, "bias", None)
                hidden = captured.pop()[:, :-1].to(weight.device)  # position t scores token t + 1
                labels = labels[:, 1:].to(weight.device)
                with torch.autocast(hidden.device.type, enabled=False):
                    logps, entropies = selective_logprobs_and_entropy(
                        hidden, weight, labels, bias=bias, temperature=self.temperature,
                        compute_entropy=compute_entropy, entropy_grad=entropy_grad)
                all_logps.append(logps[:, -logits_to_keep:])
                if compute_entropy:
                    all_entropies.append(entropies[:, -logits_to_keep:])
        finally:
            handle.remove()
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        return logps, entropies, None


def _backbone(unwrapped):
    """``(the transformers model, reason)``: PEFT's base model for LoRA-style adapters, the model itself otherwise."""
    base = unwrapped
    if hasattr(unwrapped, "get_base_model") and hasattr(unwrapped, "peft_config"):
        config = getattr(unwrapped, "active_peft_config", None)
        if config is not None and getattr(config, "is_prompt_learning", False):
            return None, "prompt-learning PEFT"
        base = unwrapped.get_base_model()
    if not (callable(getattr(base, "get_decoder", None)) and callable(getattr(base, "get_output_embeddings", None))):
        return None, "no get_decoder / get_output_embeddings"
    if base.get_decoder() is None or base.get_output_embeddings() is None:
        return None, "no decoder or no output embeddings"
    return base, None
