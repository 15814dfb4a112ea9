"""`posttrain compare recipes/compare/tiny.yaml` end to end (real tiny runs, 2 arms × 2 seeds × 2 steps), and pass@k
sampling from a saved tiny model."""
import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_tiny_spec_end_to_end_then_reused(tmp_path):
    from posttrain.compare import compare

    res = compare("tiny", runs_dir=tmp_path / "runs", out_dir=tmp_path / "report", progress=False)
    assert res["failed"] == [], res["runs"]
    assert [r["status"] for r in res["runs"]] == ["ok"] * 4
    md = Path(res["paths"]["markdown"]).read_text()
    assert "## Paired differences vs `plain`" in md and "| steer − plain | accuracy |" in md
    assert Path(res["paths"]["png"]).is_file() and json.loads(Path(res["paths"]["json"]).read_text())["arms"]
    for r in res["runs"]:
        d = Path(r["dir"])
        assert (d / "summary.json").is_file() and not (d / "model").exists()  # save_model=false without pass@k
        st = json.loads((d / "compare_run.json").read_text())
        assert st["status"] == "ok" and st["peak_rss_mb"] > 50 and st["threads"] == 1
        assert "model.threads=1" in (d / "recipe.resolved.yaml").read_text().splitlines()[0]
    # the same seed pairs the arms: identical held-out set, the seed is in each resolved recipe
    assert res["arms"]["plain"]["cost"]["s_per_step"] > 0

    t0 = time.time()
    again = compare("tiny", runs_dir=tmp_path / "runs", out_dir=tmp_path / "report", progress=False)
    assert [r["status"] for r in again["runs"]] == ["reused"] * 4
    assert time.time() - t0 < 30  # nothing trained


def test_pass_at_k_from_a_saved_model(tmp_path, one_torch_thread):
    import yaml

    from posttrain.compare.items import read_pass_at_k, sample_pass_at_k
    from posttrain.models import load_model_and_tokenizer
    from posttrain.recipes import load_recipe
    from posttrain.recipes.loader import RECIPES_DIR

    run = tmp_path / "run"
    model, tok = load_model_and_tokenizer("tiny")
    model.save_pretrained(run / "model")
    tok.save_pretrained(run / "model")
    recipe = load_recipe(RECIPES_DIR / "tiny_grpo.yaml", ["model.threads=1"])
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    res = sample_pass_at_k(run, k=2, samples=3, temperature=1.0, seed=0)
    n_items = recipe.data.eval.args["n"]
    assert len(res["correct"]) == n_items == len(res["ids"]) and all(0 <= c <= 3 for c in res["correct"])
    got = read_pass_at_k(run, 2, 3, 1.0)
    assert got is not None and 0.0 <= got["value"] <= 1.0 and len(got["items"]) == n_items
    assert read_pass_at_k(run, 2, 4, 1.0) is None  # other settings: not reused
