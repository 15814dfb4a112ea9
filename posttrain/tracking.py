"""Experiment-tracking backends (``output.report_to``): a one-line check before anything expensive.

posttrain hands ``output.report_to`` to the HF Trainer's ``report_to`` (TRL's configs inherit it), whose
integration callbacks do the logging. Those callbacks fail late and with a traceback when their package is missing
(``TensorBoardCallback requires tensorboard to be installed…`` after the model has loaded), and an unknown name is a
``ValueError`` listing every integration. :func:`check_report_to` reports both in one line naming the key, without
importing transformers or the backend (``importlib.util.find_spec`` only), so ``posttrain validate`` can call it.

Offline: ``tensorboard`` writes event files under ``<output.dir>/trainer/runs/<date>_<host>`` (transformers'
default; set ``TENSORBOARD_LOGGING_DIR`` to choose) and needs nothing else; it is the ``tracking`` extra, which
``make install`` installs. Online services (wandb, comet_ml, neptune, …) are the user's to install and configure.
"""
from __future__ import annotations

import importlib.util
from typing import Dict, Iterable, Tuple

from posttrain.errors import UserError

# transformers 5.19 ``INTEGRATION_TO_CALLBACK`` names -> the importable modules its ``is_*_available`` checks look
# for (any one suffices), and how to get them.
BACKENDS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'posttrain[tracking]' (or `make install`)"),
    "trackio": (("trackio",), "pip install trackio"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "neptune": (("neptune",), "pip install neptune"),
    "clearml": (("clearml",), "pip install clearml"),
    "dvclive": (("dvclive",), "pip install dvclive"),
    "swanlab": (("swanlab",), "pip install swanlab"),
    "codecarbon": (("codecarbon",), "pip install codecarbon"),
    "azure_ml": (("azureml",), "pip install azureml-core"),
    "dagshub": (("dagshub",), "pip install dagshub"),
    "flyte": (("flytekit",), "pip install flytekit"),
    "kubeflow": (("kubeflow",), "pip install kubeflow"),
}
SPECIAL = ("none", "all")  # the Trainer's own: no backend / every installed one


def _installed(modules: Iterable[str]) -> bool:
    for name in modules:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):  # a broken or half-installed package counts as missing
            continue
    return False


def check_report_to(backends, key: str = "output.report_to") -> None:
    """Raise :class:`~posttrain.errors.UserError` (one line naming ``key`` and the backend) when a requested
    logging backend is unknown to the HF Trainer or its package is not importable. ``None`` / ``[]`` / ``"none"``
    are fine; ``"all"`` is fine (the Trainer then uses whatever is installed)."""
    if backends is None:
        return
    items = [backends] if isinstance(backends, str) else list(backends)
    for i, name in enumerate(items):
        where = f"{key}.{i}" if not isinstance(backends, str) else key
        if not isinstance(name, str):
            raise UserError(f"{where}: a backend name must be a string (got {name!r})")
        if name in SPECIAL:
            if len(items) > 1:
                raise UserError(f"{where}: '{name}' cannot be combined with other backends")
            continue
        if name not in BACKENDS:
            import difflib

            close = difflib.get_close_matches(name, list(BACKENDS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"{where}: unknown logging backend '{name}'; {hint}known: "
                            f"{', '.join(sorted(BACKENDS))} (or none)")
        modules, how = BACKENDS[name]
        if not _installed(modules):
            raise UserError(f"{where}: logging backend '{name}' is not installed (no module "
                            f"{' or '.join(repr(m) for m in modules)}); {how}")
