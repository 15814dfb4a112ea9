"""The training-curves PNG: smoothing (hand-computed), panels without data left out, the eval panel."""
import json

import pytest

from posttrain.reporting import EVAL_PANEL, _eval_points, curve_panels, plot_curves, smooth, smoothing_weight


def test_smooth_is_a_debiased_ema():
    # w = 0.5: m1 = 0.5*1 = 0.5 -> /0.5 = 1; m2 = 0.25 + 0.5*3 = 1.75 -> /0.75 = 7/3; m3 = 0.875 + 0 -> /0.875 = 1
    assert smooth([1.0, 3.0, 0.0], 0.5) == pytest.approx([1.0, 7 / 3, 1.0])
    assert smooth([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])  # debiased: a constant stays constant
    assert smooth([1.0, 2.0], 0.0) == [1.0, 2.0]
    with pytest.raises(ValueError, match="smoothing weight"):
        smooth([1.0], 1.0)


def test_smoothing_weight_by_length():
    assert smoothing_weight(7) == 0.0 and smoothing_weight(8) == pytest.approx(0.5)
    assert smoothing_weight(20) == pytest.approx(0.8) and smoothing_weight(500) == 0.9


def _rows(keys, n=3):
    return [{"step": s, **{k: float(s) for k in keys}} for s in range(1, n + 1)]


def test_panels_without_data_are_left_out():
    names = [n for n, _ in curve_panels(_rows(["reward", "loss", "rewards/math_answer/mean",
                                                "rewards/math_answer/std"]))]
    assert names == ["reward", "loss"]  # no KL / entropy panels drawn empty
    grpo = dict(curve_panels(_rows(["reward", "rewards/math_answer/mean", "rewards/math_answer/std"])))
    assert sorted(grpo["reward"]) == ["reward", "rewards/math_answer/mean"]  # /std left out
    dpo = dict(curve_panels(_rows(["loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                   "rewards/accuracies"])))
    assert "reward" not in dpo  # DPO's implicit rewards are not GRPO rewards
    assert sorted(dpo["DPO implicit rewards"]) == ["rewards/chosen", "rewards/margins", "rewards/rejected"]
    assert list(dpo["DPO preference accuracy"]) == ["rewards/accuracies"]
    # non-finite and non-numeric values are skipped, a series with none left is no panel
    assert curve_panels([{"step": 1, "kl": float("nan")}, {"step": 2, "kl": None}]) == []


def test_eval_points():
    ev = {"before": {"accuracy": 0.25, "mean_score": 0.4}, "after": {"accuracy": 0.5, "mean_score": 0.6}}
    assert _eval_points(ev) == {"accuracy": {"before": 0.25, "after": 0.5},
                                "mean score": {"before": 0.4, "after": 0.6}}
    same = {"before": {"accuracy": 0.25, "mean_score": 0.25}, "after": {"accuracy": 0.5, "mean_score": 0.5}}
    assert list(_eval_points(same)) == ["accuracy"]
    assert _eval_points({"before": {"accuracy": 0.3, "mean_score": None}}) == {"accuracy": {"before": 0.3}}
    assert _eval_points(None) == {} and _eval_points({}) == {}
    assert [n for n, _ in curve_panels(_rows(["loss"]), _eval_points(ev))] == [EVAL_PANEL, "loss"]


def test_plot_curves_writes_a_png_or_nothing(tmp_path):
    m = tmp_path / "metrics.jsonl"
    rows = _rows(["reward", "loss", "entropy"], n=12) + [{"step": 12, "train_runtime": 3.0}]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_curves(m, tmp_path / "c.png", title="t",
                      eval_summary={"before": {"accuracy": 0.1}, "after": {"accuracy": 0.9}})
    assert png == tmp_path / "c.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1, "train_runtime": 1.0}) + "\n")
    assert plot_curves(empty, tmp_path / "e.png") is None and not (tmp_path / "e.png").exists()
