"""Console output (one bar with a short postfix, the DeepSpeed CPU warning dropped) and output.report_to checks."""
import importlib.util
import io
import json
import logging
from types import SimpleNamespace

import pytest

from posttrain.cli import main
from posttrain.console import (CompactProgressCallback, postfix, quiet_known_noise, use_compact_progress)
from posttrain.errors import UserError
from posttrain.tracking import check_report_to

GRPO_LOG = {"loss": 0.01234, "grad_norm": 0.5, "learning_rate": 1e-3, "reward": 0.5, "reward_std": 0.2,
            "entropy": 2.71828, "kl": 0.000123, "completions/mean_length": 4.0, "step_time": 1.5}


def test_postfix_picks_the_few_keys_in_order():
    assert postfix(GRPO_LOG) == {"loss": "0.0123", "reward": "0.5", "entropy": "2.72", "kl": "1.2e-04"}
    dpo = {"loss": 0.69, "rewards/margins": -0.25, "rewards/accuracies": 0.75, "entropy": 3.0, "logps/chosen": -9.0}
    assert postfix(dpo) == {"loss": "0.69", "margin": "-0.25", "acc": "0.75", "entropy": "3"}
    assert postfix({"reward": None, "kl": True}) == {}


class _Bar:
    def __init__(self):
        self.postfixes, self.lines = [], []

    def set_postfix(self, d, refresh=True):
        self.postfixes.append(dict(d))

    def write(self, line):
        self.lines.append(line)


def test_compact_callback_sets_a_postfix_instead_of_printing_the_dict():
    cb = CompactProgressCallback()
    cb.training_bar = _Bar()
    state = SimpleNamespace(is_world_process_zero=True, global_step=4)
    cb.on_log(None, state, None, logs=dict(GRPO_LOG))
    assert cb.training_bar.postfixes == [postfix(GRPO_LOG)] and cb.training_bar.lines == []
    cb.on_log(None, state, None, logs={"eval_loss": 0.5, "eval_reward": 1.0, "epoch": 1})
    cb.on_log(None, state, None, logs={"train_runtime": 10.0, "train_loss": 0.1, "total_flos": 0.0})
    assert cb.training_bar.lines == ["eval: loss 0.5, reward 1", "train: 4 steps in 10.0 s (2.50 s/step)"]
    assert len(cb.training_bar.postfixes) == 1
    other_rank = SimpleNamespace(is_world_process_zero=False, global_step=4)
    cb.on_log(None, other_rank, None, logs=dict(GRPO_LOG))
    assert len(cb.training_bar.postfixes) == 1


def test_use_compact_progress_switches_the_trainer_default():
    import transformers.trainer as hf_trainer
    from transformers.trainer_callback import ProgressCallback

    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    before, bars = hf_trainer.DEFAULT_PROGRESS_CALLBACK, hf_logging.is_progress_bar_enabled()
    ds_bars = ds_logging.is_progress_bar_enabled()
    try:
        use_compact_progress(True)
        assert hf_trainer.DEFAULT_PROGRESS_CALLBACK is CompactProgressCallback
        assert not hf_logging.is_progress_bar_enabled()  # no "Loading weights" bars
        assert not ds_logging.is_progress_bar_enabled()  # no "Tokenizing train dataset" bars
        use_compact_progress(False)  # --verbose
        assert hf_trainer.DEFAULT_PROGRESS_CALLBACK is ProgressCallback and hf_logging.is_progress_bar_enabled()
        assert ds_logging.is_progress_bar_enabled()
    finally:
        hf_trainer.DEFAULT_PROGRESS_CALLBACK = before
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
        (ds_logging.enable_progress_bar if ds_bars else ds_logging.disable_progress_bar)()


def test_only_the_deepspeed_cpu_accelerator_warning_is_dropped():
    logger = logging.getLogger("DeepSpeed")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        quiet_known_noise()
        quiet_known_noise()  # idempotent
        logger.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.")
        logger.warning("some other DeepSpeed warning")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "some other DeepSpeed warning\n"
    assert sum(type(f).__name__ == "_DropMessage" for f in logger.filters) == 1


def test_check_report_to_accepts_installed_and_empty():
    for ok in (None, [], "none", ["none"], ["all"]):
        check_report_to(ok)
    if importlib.util.find_spec("tensorboard") is not None:
        check_report_to(["tensorboard"])


@pytest.mark.parametrize("value,expected", [
    (["tensorbord"], "output.report_to.0: unknown logging backend 'tensorbord'; did you mean 'tensorboard'?"),
    (["tensorboard", "none"], "output.report_to.1: 'none' cannot be combined with other backends"),
    ([3], "output.report_to.0: a backend name must be a string (got 3)"),
])
def test_check_report_to_rejects_bad_names(value, expected):
    with pytest.raises(UserError) as info:
        check_report_to(value)
    assert str(info.value).startswith(expected), str(info.value)


def test_missing_backend_package_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(UserError, match=r"^output.report_to.0: logging backend 'tensorboard' is not installed "
                                        r"\(no module 'tensorboard' or 'tensorboardX'\); pip install "
                                        r"'posttrain\[tracking\]'"):
        check_report_to(["tensorboard"])


def test_validate_reports_a_missing_backend(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["validate", "tiny_grpo", "output.report_to=[wandb]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posttrain: error: output.report_to.0: logging backend 'wandb' is not installed")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_a_real_run_prints_a_bar_not_dicts_and_verbose_restores_them(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "posttrain", "run", "tiny_grpo", f"output.dir={tmp_path / 'r'}",
                               "model.threads=1", "train.max_steps=2", "eval.enabled=false", "output.plots=false",
                               "output.save_model=false", "output.overwrite=true", *extra],
                              capture_output=True, text=True, timeout=600, cwd=root)

    res = run()
    assert res.returncode == 0, res.stderr[-2000:]
    both = res.stdout + res.stderr
    assert "'loss':" not in both and "loss=" in res.stderr and "train: 2 steps in" in res.stdout
    assert "Setting accelerator to CPU" not in both and "Loading weights" not in both
    rows = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and len(json.loads(rows[0])) > 20  # the full dicts are still written
    res = run("--verbose")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "'loss':" in res.stdout + res.stderr
