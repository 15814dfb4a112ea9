"""posttrain.compare.items: where per-item held-out scores come from."""
import json

import numpy as np

from posttrain.compare.items import item_id, item_metric_values, read_item_scores


def test_item_scores_from_summary_hook(tmp_path):
    # what evaluate() returns once it adds "item_scores": [...] (the one-line hook in docs/compare.md)
    (tmp_path / "summary.json").write_text(json.dumps({"eval": {"after": {"accuracy": 1 / 3,
                                                                          "item_scores": [1.0, 0.0, None]}}}))
    got = read_item_scores(tmp_path, threshold=1.0)
    assert got["ids"] is None and got["source"].startswith("summary.json")
    assert np.array_equal(got["correct"], [1.0, 0.0, 0.0])  # a missing score is not correct (as evaluate counts)
    assert got["score"][0] == 1.0 and np.isnan(got["score"][2])
    assert np.array_equal(item_metric_values(got, "accuracy"), got["correct"])
    assert item_metric_values(got, "truncated_fraction") is None and item_metric_values(got, "entropy_auc") is None


def test_eval_items_file_is_preferred(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"eval": {"after": {"item_scores": [0.0]}}}))
    rows = [{"id": "a", "score": 0.8, "correct": True, "truncated": False},
            {"id": "b", "score": 0.2, "truncated": True}]  # "correct" absent: score >= threshold
    (tmp_path / "eval_items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_item_scores(tmp_path, threshold=0.75)
    assert got["ids"] == ["a", "b"] and np.array_equal(got["correct"], [1.0, 0.0])
    assert np.array_equal(got["truncated"], [0.0, 1.0])


def test_no_per_item_scores(tmp_path):
    assert read_item_scores(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({"eval": {"after": {"accuracy": 0.5}}}))
    assert read_item_scores(tmp_path) is None


def test_item_id_is_stable_and_content_based():
    p = [{"role": "user", "content": "2+2?"}]
    assert item_id(p) == item_id(json.loads(json.dumps(p))) and item_id(p) != item_id("2+2?") and len(item_id(p)) == 12
