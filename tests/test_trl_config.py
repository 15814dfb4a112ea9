"""`posttrain run/validate --trl-config file.yaml`: an existing TRL YAML config maps onto the recipe (every field
honoured or mapped, hub datasets refused in one line); command-line overrides still win."""
import pytest

from posttrain.cli import main
from posttrain.recipes import load_recipe
from posttrain.recipes.loader import RECIPES_DIR, RecipeError, trl_config_overrides

TRL_YAML = """\
model_name_or_path: tiny
output_dir: {out}
learning_rate: 2.0e-4
per_device_train_batch_size: 8
num_generations: 4
max_completion_length: 6
beta: 0.04
loss_type: dr_grpo
logging_steps: 2
report_to: none
use_peft: true
lora_r: 8
lora_alpha: 16
lora_target_modules: [q_proj, v_proj]
"""


def test_trl_config_maps_onto_the_recipe(tmp_path):
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(TRL_YAML.format(out=tmp_path / "run"))
    overrides = trl_config_overrides(cfg)
    r = load_recipe(RECIPES_DIR / "tiny_grpo.yaml", overrides + ["train.beta=0.0"])
    assert r.model.name == "tiny" and r.output.dir == str(tmp_path / "run") and r.output.logging_steps == 2
    assert r.train["learning_rate"] == 2e-4 and r.train["loss_type"] == "dr_grpo" and r.train["num_generations"] == 4
    assert r.train["beta"] == 0.0  # the command line wins over the TRL file
    assert r.model.lora.r == 8 and r.model.lora.alpha == 16 and r.model.lora.target_modules == ["q_proj", "v_proj"]
    assert r.output.report_to == ["none"]


def test_trl_config_through_the_cli_and_bad_keys(tmp_path, capsys):
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(TRL_YAML.format(out=tmp_path / "run"))
    assert main(["validate", str(RECIPES_DIR / "tiny_grpo.yaml"), "--trl-config", str(cfg)]) == 0
    hub = tmp_path / "hub.yaml"
    hub.write_text("dataset_name: trl-lib/tldr\nlearning_rate: 1.0e-5\n")
    with pytest.raises(RecipeError, match="dataset_name: posttrain reads its data from data.train"):
        trl_config_overrides(hub)
    typo = tmp_path / "typo.yaml"
    typo.write_text("learning_rat: 1.0e-5\n")
    assert main(["validate", str(RECIPES_DIR / "tiny_grpo.yaml"), "--trl-config", str(typo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.learning_rat: unknown key" in err[0], err
    lora = tmp_path / "lora.yaml"
    lora.write_text("lora_r: 8\n")
    with pytest.raises(RecipeError, match="set use_peft: true"):
        trl_config_overrides(lora)
