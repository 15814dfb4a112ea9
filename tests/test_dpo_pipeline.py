"""DPO recipes, the offline preference data and the reward-model stage's margins (fast parts; the runs through the
CLI are in test_e2e_dpo_cli.py)."""
import json

import pytest

from posttrain.data import DATASETS, DataError, preference_pairs
from posttrain.errors import UserError
from posttrain.recipes import RecipeError, load_recipe
from posttrain.recipes.loader import RECIPES_DIR

TINY = dict(model="tiny", n_prompts=16, max_new_tokens=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, one_torch_thread):
    return str(tmp_path_factory.mktemp("pref-cache"))


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*dpo*.yaml")), ids=lambda p: p.stem)
def test_shipped_dpo_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.algorithm in ("dpo", "reward_model+dpo")
    assert recipe.data.train.name == "preferences"


@pytest.mark.parametrize("override,where", [
    ("weighting.pairs=[{name: madpo, c_min: 1.5}]", "weighting.pairs.0: madpo: c_min: Input should be less than 1 (got 1.5)"),
    ("weighting.pairs=[{name: beta_dpo, rho: 1.0}]", "weighting.pairs.0: beta_dpo: rho"),
    ("weighting.pairs=[{name: beta_dpo}, {name: beta_dpo}]", "only one batch-beta strategy"),
    ("weighting.pairs=[{name: madpo, tau2: 1}]", "weighting.pairs.0: madpo: unknown argument 'tau2'"),
    ("weighting.tokens=[{name: steer}]", "weighting.tokens: not used by algorithm 'dpo'"),
    ("train.num_generations=4", "train.num_generations: unknown key (not a field of trl.DPOConfig)"),
    ("reward_model.train.num_generations=4", None),  # only checked for reward_model+dpo
    ("algorithm=grpo", "GRPO needs at least one entry under 'rewards'"),
])
def test_bad_dpo_recipe_is_one_line(tmp_path, override, where):
    src = RECIPES_DIR / "tiny_dpo.yaml"
    if where is None:
        load_recipe(src, [override])
        return
    with pytest.raises(RecipeError) as err:
        load_recipe(src, [override] + (["rewards=[]"] if override.startswith("algorithm") else []))
    assert where in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_reward_model_train_keys_are_checked_against_reward_config():
    src = RECIPES_DIR / "tiny_dpo_madpo.yaml"
    with pytest.raises(RecipeError, match=r"reward_model\.train\.beta: unknown key \(not a field of trl\.RewardConfig"):
        load_recipe(src, ["reward_model.train.beta=0.1"])
    with pytest.raises(RecipeError, match=r"reward_model\.train\.output_dir"):
        load_recipe(src, ["reward_model.train.output_dir=/tmp/x"])
    with pytest.raises(RecipeError, match=r"weighting\.pairs: pair strategies need algorithm"):
        load_recipe(RECIPES_DIR / "tiny_grpo.yaml", ["weighting.pairs=[{name: madpo}]"])


def test_preference_pairs_tiny_twin(cache):
    assert DATASETS.get("preferences") is preference_pairs
    ds = preference_pairs(**TINY, cache_dir=cache)
    assert {"prompt", "chosen", "rejected", "score_chosen", "score_rejected", "flipped"} <= set(ds.column_names)
    assert 0 < len(ds) <= 16
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["chosen"][0]["role"] == "assistant"
    assert not any(ds["flipped"])  # quality high: no label noise
    assert all(c > r for c, r in zip(ds["score_chosen"], ds["score_rejected"]))
    files = list((__import__("pathlib").Path(cache) / "data" / "preferences").glob("tiny-train-*.jsonl"))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == 16  # one row per prompt, cached
    mtime = files[0].stat().st_mtime_ns
    noisy = preference_pairs(**TINY, label_noise=1.0, cache_dir=cache)
    assert files[0].stat().st_mtime_ns == mtime  # read from the cache, not generated again
    assert all(noisy["flipped"]) and all(c < r for c, r in zip(noisy["score_chosen"], noisy["score_rejected"]))
    assert noisy["prompt"] == ds["prompt"]
    low = preference_pairs(**TINY, quality="low", cache_dir=cache)
    assert low["flipped"] == preference_pairs(**TINY, quality="low", cache_dir=cache)["flipped"]  # seeded
    assert len(preference_pairs(**TINY, n=3, cache_dir=cache)) == 3
    short = preference_pairs(**TINY, instruction="Reply in one short sentence:", cache_dir=cache)
    assert short["prompt"][0][0]["content"].startswith("Reply in one short sentence:\n\n")
    assert ds["prompt"][0][0]["content"].startswith("Reply to this tweet:\n\n")  # the default cache is kept
    assert len(list(files[0].parent.glob("tiny-train-*.jsonl"))) == 2  # its own cached generation


@pytest.mark.parametrize("kw,msg", [
    ({"quality": "great"}, "quality must be one of"), ({"label_noise": 1.5}, "label_noise"),
    ({"samples": 1}, "samples must be an integer >= 2"), ({"split": "test"}, "split"),
])
def test_preference_pairs_bad_args(kw, msg):
    with pytest.raises(DataError, match=msg):
        preference_pairs(**dict(TINY, **kw))


def test_margins_from_score_columns(cache, tmp_path):
    from posttrain.pipelines.reward_model import add_margin_column

    recipe = load_recipe(RECIPES_DIR / "tiny_dpo_madpo.yaml", ["reward_model.source=columns", "reward_model.scale=10"])
    ds = preference_pairs(**TINY, quality="low", cache_dir=cache)
    out, info = add_margin_column(recipe, ds.add_column("margin", [0.0] * len(ds)), tmp_path)
    expected = [(c - r) * 10 for c, r in zip(ds["score_chosen"], ds["score_rejected"])]
    assert out["margin"] == pytest.approx(expected)
    assert info["agrees_with_gold"] == 1.0  # gold scores always know which reply is better
    assert info["agrees_with_labels"] == pytest.approx(1 - sum(ds["flipped"]) / len(ds))
    saved = json.loads((tmp_path / "reward_model" / "margins.json").read_text())
    assert saved["margins"] == pytest.approx(expected)
    bad = load_recipe(RECIPES_DIR / "tiny_dpo_madpo.yaml", ["reward_model.source=columns",
                                                            "reward_model.chosen_column=gold"])
    with pytest.raises(UserError, match="reward_model.chosen_column: data.train has no column 'gold'"):
        add_margin_column(bad, ds, tmp_path / "bad")
