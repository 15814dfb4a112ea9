"""posttrain.compare.stats: hand-computed cases (no training, no scipy)."""
import math

import numpy as np
import pytest

from posttrain.compare import stats


@pytest.mark.parametrize("df, q975", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)])
def test_t_quantiles_match_the_table(df, q975):
    assert stats.t_ppf(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert stats.t_ppf(0.025, df) == pytest.approx(-q975, abs=1e-4)
    assert stats.t_cdf(0.0, df) == 0.5


def test_t_cdf_closed_form_for_two_degrees_of_freedom():
    # df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.7, 1.7320508, 5.0):
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_paired_t_by_hand():
    # d = [0.1, 0.2, 0.0]: mean 0.1, sd 0.1, se 0.1/sqrt(3), t = sqrt(3), df 2
    r = stats.paired_t([0.5, 0.7, 0.6], [0.4, 0.5, 0.6])
    se = 0.1 / math.sqrt(3)
    assert r["diff"] == pytest.approx(0.1) and r["sd"] == pytest.approx(0.1) and r["se"] == pytest.approx(se)
    half = 4.302652729749 * se
    assert r["lo"] == pytest.approx(0.1 - half, abs=1e-9) and r["hi"] == pytest.approx(0.1 + half, abs=1e-9)
    assert r["t"] == pytest.approx(math.sqrt(3))
    p = 2 * (1 - (0.5 + math.sqrt(3) / (2 * math.sqrt(5))))  # closed form of the df = 2 cdf
    assert r["p"] == pytest.approx(p, abs=1e-12)
    assert r["n_seeds"] == 3 and r["df"] == 2


def test_paired_t_drops_missing_pairs_and_needs_two():
    r = stats.paired_t([0.5, None, float("nan")], [0.4, 0.1, 0.2])
    assert r["n_seeds"] == 1 and r["diff"] == pytest.approx(0.1) and r["lo"] is None and r["p"] is None
    c = stats.paired_t([0.3, 0.5], [0.1, 0.3])  # constant difference: a zero-width interval
    assert c["lo"] == pytest.approx(0.2) and c["hi"] == pytest.approx(0.2) and c["p"] == 0.0


def test_mde_is_2_80_standard_errors():
    assert stats.mde(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert stats.mde(0.1 / math.sqrt(3)) == pytest.approx(2.801585 * 0.057735, abs=1e-5)
    assert stats.mde(None) is None


def test_mean_ci_t():
    r = stats.mean_ci_t([1.0, 2.0, 3.0])  # sd 1, se 1/sqrt 3
    assert r["mean"] == 2.0 and r["lo"] == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert stats.mean_ci_t([1.0])["lo"] is None


def test_bootstrap_constant_difference_has_zero_width():
    a = np.random.default_rng(0).normal(size=(3, 50))
    r = stats.paired_bootstrap(a + 0.1, a, resamples=500)
    # pairing cancels the (large) item noise completely
    assert r["diff"] == pytest.approx(0.1) and r["lo"] == pytest.approx(0.1) and r["hi"] == pytest.approx(0.1)
    assert r["se"] == pytest.approx(0.0, abs=1e-12) and r["n_seeds"] == 3 and r["n_items"] == 50


def test_bootstrap_items_only_matches_the_binomial_se():
    x = np.tile([0.0, 1.0], 200)[None, :]  # one seed, 400 items, p = 0.5: se = sqrt(0.25 / 400) = 0.025
    r = stats.bootstrap_mean(x, resamples=4000, seed=1)
    assert r["mean"] == 0.5 and r["se"] == pytest.approx(0.025, rel=0.1)
    assert r["lo"] == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)


def test_bootstrap_resamples_seeds():
    # two seeds, each constant over its items (0 and 1): only the seed level varies. Resampled means are
    # 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> se = sqrt(1/8), 2.5 % / 97.5 % quantiles 0 and 1.
    x = np.array([[0.0] * 10, [1.0] * 10])
    r = stats.bootstrap_mean(x, resamples=4000, seed=0)
    assert r["mean"] == 0.5 and r["lo"] == 0.0 and r["hi"] == 1.0
    assert r["se"] == pytest.approx(math.sqrt(0.125), rel=0.05)


def test_bootstrap_ignores_missing_items_and_checks_shapes():
    x = np.array([[1.0, np.nan, 1.0], [1.0, 1.0, np.nan]])
    assert stats.bootstrap_mean(x, resamples=200)["mean"] == 1.0
    with pytest.raises(ValueError):
        stats.paired_bootstrap(np.zeros((2, 3)), np.zeros((2, 4)))


def test_window_summary_by_hand():
    pts = [(s, float(s)) for s in range(10, 0, -1)]  # unsorted on purpose
    w = stats.window_summary(pts, 0.2)
    assert w["tail_mean"] == 9.5 and w["tail_points"] == 2  # last 20 % of the 10 steps: 9, 10
    assert w["auc"] == pytest.approx(49.5)                  # trapezoid of y = x from 1 to 10
    assert w["mean"] == pytest.approx(5.5)
    assert stats.window_summary(pts, 0.25)["tail_mean"] == 9.0  # steps > 7.5: 8, 9, 10
    one = stats.window_summary([(3, 0.7), (4, float("nan"))])
    assert one["tail_mean"] == 0.7 and one["auc"] == 0.0 and one["n_points"] == 1
    assert stats.window_summary([])["tail_mean"] is None
    # the window is the last 20 % of the run's steps, not of the logged points: a curve logged only early (the
    # entropy of a run whose late steps carried no gradient) has no tail value
    early = [(11, 0.9), (12, 0.95)]
    assert stats.window_summary(early, 0.2, last_step=40)["tail_mean"] is None
    assert stats.window_summary(early, 0.2, last_step=40)["tail_points"] == 0
    assert stats.window_summary(early, 0.2, last_step=40)["last_logged_step"] == 12.0   # the curve's end, not the run's
    sparse = [(s, float(s)) for s in range(1, 41, 2)] + [(34, 100.0)]   # odd steps 1..39 and step 34
    w = stats.window_summary(sparse, 0.2, last_step=40)
    assert w["tail_points"] == 5 and w["tail_mean"] == pytest.approx((33 + 100 + 35 + 37 + 39) / 5)


def test_pass_at_k_unbiased():
    assert stats.pass_at_k(4, 1, 2) == pytest.approx(0.5)       # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert stats.pass_at_k(5, 2, 2) == pytest.approx(0.7)       # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert stats.pass_at_k(2, 0, 2) == 0.0 and stats.pass_at_k(2, 1, 2) == 1.0
    assert stats.pass_at_k(3, 1, 1) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        stats.pass_at_k(2, 3, 1)


def test_wording_follows_the_numbers():
    assert stats.describe(0.01, -0.05, 0.07, 0.162) == "no detectable difference (MDE 0.162)"
    assert stats.describe(0.1, 0.05, 0.15, 0.08) == "higher than the baseline by 0.100 [0.050, 0.150]"
    assert stats.describe(-0.1, -0.15, -0.05, 0.08).startswith("lower than the baseline by 0.100")
    assert stats.describe(0.1, None, None, None, n_seeds=1) == "no interval (n = 1 seed)"
    assert stats.describe(None, None, None, None).startswith("n/a")
    # the bootstrap excludes 0, the t over seeds does not: neither higher nor lower
    both = stats.describe(0.152, 0.044, 0.260, 0.151, seed_interval=(-0.045, 0.350))
    assert both == ("inconclusive: +0.152, bootstrap [0.044, 0.260] excludes 0 but the t over seeds "
                    "[-0.045, 0.350] does not (MDE 0.151)")
    assert stats.describe(-0.1, -0.15, -0.05, 0.08, seed_interval=(-0.2, -0.01)).startswith("lower than the baseline")
    # one seed: no t interval, the bootstrap alone decides
    assert stats.describe(0.1, 0.05, 0.15, 0.08, seed_interval=(None, None)).startswith("higher")


def test_hypervolume_summary_by_hand():
    # two seeds, two maximised objectives, ref (0, 0): HV of a point = x * y
    r = stats.hypervolume_summary({0: [0.2, 0.8], 1: [0.6, 0.4]}, [0.0, 0.0])
    assert r["per_seed"] == {0: pytest.approx(0.16), 1: pytest.approx(0.24)}
    assert r["mean"] == pytest.approx(0.20) and r["sd"] == pytest.approx(math.sqrt(2) * 0.04)
    assert r["mean_point"] == pytest.approx([0.4, 0.6]) and r["hv_of_mean_point"] == pytest.approx(0.24)
    # a minimised objective is sign-flipped: ref 1.0 and value 0.25 -> gain 0.75; a point not beating ref -> 0
    m = stats.hypervolume_summary({3: [0.5, 0.25], 4: [0.5, 1.5]}, [0.0, 1.0], maximize=[True, False])
    assert m["per_seed"] == {3: pytest.approx(0.375), 4: 0.0}
    assert m["hv_of_mean_point"] == pytest.approx(0.5 * 0.125)
    one = stats.hypervolume_summary({0: [1.0, 2.0]}, [0.0, 0.0])
    assert one["sd"] is None and one["mean"] == pytest.approx(2.0)
    assert stats.hypervolume_summary({}, [0.0, 0.0])["hv_of_mean_point"] is None
