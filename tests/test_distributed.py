"""Shipped DeepSpeed configs, precision agreement with the trainer config, and the `posttrain launch` command (fast;
the 2-process runs are in test_launch_2proc.py and test_zero_loss_2proc.py)."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from posttrain.distributed import (CONFIGS_DIR, apply_deepspeed, check_deepspeed_mismatches, deepspeed_config,
                                   resolve_auto, zero_stage_of)
from posttrain.errors import UserError
from posttrain.launch import build_launch_command
from posttrain.recipes.schema import DistributedSection

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage,offload,name", [(2, False, "zero2"), (2, True, "zero2_offload"), (3, False, "zero3"),
                                                (3, True, "zero3_offload")])
def test_shipped_configs(stage, offload, name):
    cfg = deepspeed_config(DistributedSection(zero_stage=stage, offload=offload))
    assert cfg == json.loads((CONFIGS_DIR / f"{name}.json").read_text())
    assert zero_stage_of(cfg) == stage
    # precision and batch geometry always come from the trainer config
    assert cfg["bf16"] == {"enabled": "auto"} and cfg["fp16"] == {"enabled": "auto"}
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert cfg[key] == "auto"
    zero = cfg["zero_optimization"]
    assert ("offload_optimizer" in zero) == offload and ("offload_param" in zero) == (offload and stage == 3)
    if stage == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # trainer.save_model writes full weights


def test_user_config_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        deepspeed_config(DistributedSection(config=str(tmp_path / "nope.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot read") as err:
        deepspeed_config(DistributedSection(config=str(bad)))
    assert "\n" not in str(err.value)


def test_precision_from_user_config_agrees_with_train(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    section = DistributedSection(config=str(path))
    train = apply_deepspeed({}, section)  # not set in the recipe: the DeepSpeed config decides
    assert train["bf16"] is True and train["deepspeed"]["bf16"]["enabled"] is True
    with pytest.raises(UserError, match=r"train.bf16=False disagrees with the DeepSpeed config"):
        apply_deepspeed({"bf16": False}, section)
    # "auto" leaves the trainer's value alone
    train = apply_deepspeed({"bf16": False}, DistributedSection(zero_stage=3))
    assert train["bf16"] is False and train["deepspeed"]["bf16"]["enabled"] == "auto"


def test_hf_mismatch_check_is_one_line():
    # HF's own comparison (the one that would raise at train time) run on a real TRL config
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig
    from trl import GRPOConfig

    args = GRPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=4, num_generations=4, use_cpu=True,
                      bf16=False, report_to="none")
    hf = HfTrainerDeepSpeedConfig({"train_micro_batch_size_per_gpu": 3, "zero_optimization": {"stage": 2}})
    hf.trainer_config_process(args)
    with pytest.raises(UserError, match="train_micro_batch_size_per_gpu=3") as err:
        check_deepspeed_mismatches(types.SimpleNamespace(hf_deepspeed_config=hf))
    assert "\n" not in str(err.value)
    ok = HfTrainerDeepSpeedConfig(deepspeed_config(DistributedSection(zero_stage=2)))
    ok.trainer_config_process(args)
    check_deepspeed_mismatches(types.SimpleNamespace(hf_deepspeed_config=ok))
    assert ok.config["train_micro_batch_size_per_gpu"] == 4 and ok.config["bf16"]["enabled"] is False


def test_resolve_auto_leaves_no_auto():
    cfg = resolve_auto(deepspeed_config(DistributedSection(zero_stage=3)), micro_batch_size=2, world_size=2,
                       hidden_size=64)
    assert cfg["train_batch_size"] == 4 and cfg["zero_optimization"]["stage3_param_persistence_threshold"] == 640
    assert "auto" not in json.dumps(cfg)


def test_launch_command():
    cmd = build_launch_command("r.yaml", ["train.max_steps=2"], nproc=2, master_port=29123, python="py")
    assert cmd == ["py", "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", "29123",
                   "--module", "posttrain", "run", "r.yaml", "train.max_steps=2"]
    cmd = build_launch_command("r.yaml", [], nproc=8, master_port=29500, hostfile="hosts", master_addr="10.0.0.1",
                               resume=True, python="py")
    assert cmd[3:9] == ["--hostfile", "hosts", "--master_addr", "10.0.0.1", "--num_gpus", "8"]
    assert cmd[-1] == "--resume"
    with pytest.raises(UserError, match="--nproc"):
        build_launch_command("r.yaml", [], nproc=0, master_port=29500)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_launch_dry_run_and_errors(tmp_path):
    res = _cli("launch", "--nproc", "2", "--dry-run", "recipes/tiny_grpo.yaml", "distributed.zero_stage=3")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip().splitlines()[-1]
    assert "-m deepspeed.launcher.runner --num_gpus 2 --master_port " in line
    assert line.endswith("--module posttrain run recipes/tiny_grpo.yaml distributed.zero_stage=3")
    port = int(line.split("--master_port ")[1].split()[0])
    assert 0 < port < 65536
    # bad input is caught once, in the launching process: one line, exit code 2
    for args, msg in [(("distributed.zero_stage=1",), "distributed.zero_stage"),
                      ((f"distributed.config={tmp_path}/none.json",), "does not exist")]:
        res = _cli("launch", "--nproc", "2", "--dry-run", "recipes/tiny_grpo.yaml", *args)
        assert res.returncode == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = _cli("launch", "--nproc", "2", "--hostfile", str(tmp_path / "hosts"), "recipes/tiny_grpo.yaml")
    assert res.returncode == 2 and "--hostfile" in res.stderr


def _shm_file(d: Path, port, rank, addr="127.0.0.1", uid=None) -> Path:
    from posttrain.distributed import SHM_PREFIX

    p = d / f"{SHM_PREFIX}_{os.getuid() if uid is None else uid}_{addr}_{port}_{rank}"
    p.write_bytes(b"x")
    return p


def test_remove_shm_allreduce_buffers_only_touches_its_run(tmp_path):
    from posttrain.distributed import remove_shm_allreduce_buffers

    r0, r1 = _shm_file(tmp_path, 111, 0), _shm_file(tmp_path, 111, 1)
    other_port, other_user = _shm_file(tmp_path, 1111, 0), _shm_file(tmp_path, 111, 0, uid=os.getuid() + 1)
    other_addr = _shm_file(tmp_path, 111, 2, addr="10.0.0.2")
    assert remove_shm_allreduce_buffers(port=111, addr="127.0.0.1", rank=1, shm_dir=tmp_path) == [r1]
    assert r0.exists() and not r1.exists()
    assert sorted(remove_shm_allreduce_buffers(port=111, shm_dir=tmp_path)) == sorted([r0, other_addr])
    assert other_port.exists() and other_user.exists()
    assert remove_shm_allreduce_buffers(port=111, shm_dir=tmp_path) == []  # nothing left: no error


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_a_rank_unlinks_its_shm_buffer_at_exit():
    """A real process with a launcher's environment removes its own rank's file (and no other rank's) at exit."""
    from posttrain.distributed import free_port

    port = free_port()
    mine, other = _shm_file(Path("/dev/shm"), port, 1), _shm_file(Path("/dev/shm"), port, 0)
    try:
        env = dict(os.environ, MASTER_PORT=str(port), MASTER_ADDR="127.0.0.1", RANK="1")
        code = "from posttrain.distributed import register_shm_cleanup; assert register_shm_cleanup()"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
        assert not mine.exists() and other.exists()
        env.pop("RANK")  # not started by a launcher: nothing registered
        code = "from posttrain.distributed import register_shm_cleanup; assert not register_shm_cleanup()"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
        assert other.exists()
    finally:
        mine.unlink(missing_ok=True)
        other.unlink(missing_ok=True)
