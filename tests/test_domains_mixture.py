"""Data mixtures: the DomainSampler (hand-computed layouts, rank consistency, exact resume, shares), the recipe and
pre-flight errors (one line naming the key), arithmetic_sft's noise, and tiny SFT / GRPO runs with domains."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.data.mixture import DomainSampler, concat_domains, split_domain_spec

ROOT = Path(__file__).resolve().parents[1]
TINY_SFT = ROOT / "recipes" / "tiny_sft_domains.yaml"
TINY_GRPO = ROOT / "recipes" / "tiny_grpo_domains.yaml"


# ------------------------------------------------------------------------------------------------ sampler
def test_one_domain_weight_draws_only_that_domain_each_row_once_per_pass():
    s = DomainSampler([[0, 1, 2], [10, 11, 12, 13]], [0.0, 1.0], unit_size=4, units_per_epoch=3)
    out = list(s)
    assert len(out) == len(s) == 12
    assert set(out) <= {10, 11, 12, 13}
    for k in range(3):  # every pass over the domain holds each of its rows once
        assert sorted(out[4 * k:4 * k + 4]) == [10, 11, 12, 13]


def test_grpo_layout_repeats_each_prompt_and_the_unit_like_trls_repeat_sampler():
    s = DomainSampler([[0, 1, 2, 3], [4, 5]], [0.5, 0.5], unit_size=2, mini_repeat=3, repeat_count=2,
                      units_per_epoch=2, seed=3)
    out = list(s)
    assert len(out) == 2 * 2 * 3 * 2
    for u in range(2):
        unit = out[12 * u:12 * (u + 1)]
        a, b = unit[0], unit[3]
        assert unit == [a, a, a, b, b, b] * 2  # groups intact, the unit reused for steps_per_generation


def test_every_rank_draws_the_same_stream_and_takes_its_slice():
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    rows = [list(range(0, 7)), list(range(7, 20))]
    streams = []
    for rank in range(2):
        s = DomainSampler(rows, [0.3, 0.7], unit_size=8, seed=11, units_per_epoch=3)
        shard = BatchSamplerShard(BatchSampler(s, batch_size=2, drop_last=False), num_processes=2,
                                  process_index=rank)
        streams.append([b for b in shard])
    full = list(DomainSampler(rows, [0.3, 0.7], unit_size=8, seed=11, units_per_epoch=3))
    batches = [full[i:i + 2] for i in range(0, len(full), 2)]
    assert streams[0] == batches[0::2] and streams[1] == batches[1::2]  # disjoint slices of one stream


def test_shares_follow_the_weights():
    s = DomainSampler([list(range(50)), list(range(50, 60)), list(range(60, 200))], [0.2, 0.5, 0.3],
                      unit_size=1000, units_per_epoch=10, seed=0)
    out = torch.tensor(list(s))
    n = out.numel()
    share = [float(((out >= lo) & (out < hi)).sum()) / n for lo, hi in ((0, 50), (50, 60), (60, 200))]
    for p, q in zip(share, (0.2, 0.5, 0.3)):
        assert abs(p - q) < 4 * math.sqrt(q * (1 - q) / n)


def test_new_weights_apply_from_the_next_unit():
    s = DomainSampler([[0, 1], [2, 3]], [1.0, 0.0], unit_size=2, units_per_epoch=4)
    it = iter(s)
    first = [next(it), next(it)]
    s.set_weights([0.0, 1.0])
    rest = list(it)
    assert set(first) <= {0, 1} and set(rest) <= {2, 3}


def test_resume_redraws_the_consumed_unit_and_continues_exactly():
    """A run that consumed 5 rows (the loader prefetched further) and changed its weights: the restored sampler
    continues with exactly the uninterrupted stream."""
    def run(stop_after=None, state=None):
        s = DomainSampler([list(range(5)), list(range(5, 12))], [0.5, 0.5], unit_size=3, units_per_epoch=20,
                          seed=4)
        if state is not None:
            s.load_state_dict(state)
        out, it = [], iter(s)
        for i in range(30 if state is None else 30 - 5):
            out.append(next(it))
            if state is None and i == 7:  # the weights change after 8 rows were drawn (prefetch included)
                s.set_weights([0.9, 0.1])
            if stop_after is not None and i + 1 == stop_after:
                snap = s.state_at(5)    # 5 rows consumed by training, 8 drawn
                return out, snap
        return out, None

    _, snap = run(stop_after=8)
    straight, _ = run()
    resumed, _ = run(state=snap)
    # the redrawn unit uses the weights it was drawn with; the next units use the current (changed) weights
    assert resumed[:4] == straight[5:9]
    assert snap["weights_D"] == [0.9, 0.1]


def test_resume_state_round_trips_through_torch_save(tmp_path):
    s = DomainSampler([[0, 1, 2], [3, 4]], [0.4, 0.6], unit_size=2, units_per_epoch=5, seed=2)
    it = iter(s)
    for _ in range(5):
        next(it)
    torch.save(s.state_at(4), tmp_path / "s.pt")
    again = DomainSampler([[0, 1, 2], [3, 4]], [0.4, 0.6], unit_size=2, units_per_epoch=5, seed=2)
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    ref = list(DomainSampler([[0, 1, 2], [3, 4]], [0.4, 0.6], unit_size=2, units_per_epoch=5, seed=2))
    assert list(again)[:6] == ref[4:10]
    with pytest.raises(ValueError, match="has 2 domains and seed 2; this run has 3"):
        DomainSampler([[0], [1], [2]], [1, 1, 1], unit_size=1, seed=2).load_state_dict(s.state_at(4))


@pytest.mark.parametrize("weights", [[0.0, 0.0], [1.0, float("nan")], [-1.0, 2.0], [1.0]])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="weights_D"):
        DomainSampler([[0], [1]], weights, unit_size=1)


def test_empty_domain_is_refused():
    with pytest.raises(ValueError, match="at least one row"):
        DomainSampler([[0], []], [0.5, 0.5], unit_size=1)


def test_refill_draws_leave_the_stream_untouched():
    a = DomainSampler([[0, 1], [2, 3]], [0.0, 1.0], unit_size=2, units_per_epoch=2, seed=1)
    b = DomainSampler([[0, 1], [2, 3]], [0.0, 1.0], unit_size=2, units_per_epoch=2, seed=1)
    refill = a.draw_rows(6, torch.Generator().manual_seed(0))
    assert set(refill) <= {2, 3} and list(a) == list(b)


def test_split_domain_spec_and_concat():
    spec, opts = split_domain_spec({"name": "temperature", "temperature": 3.0, "update_every": 5})
    assert spec == {"name": "temperature", "temperature": 3.0} and opts.update_every == 5
    with pytest.raises(ValueError, match="update_every"):
        split_domain_spec({"name": "fixed", "update_every": 0})
    import datasets

    ds = concat_domains([datasets.Dataset.from_dict({"prompt": ["a", "b"]}),
                         datasets.Dataset.from_dict({"prompt": ["c"]})])
    assert ds["domain_id"] == [0, 0, 1] and ds["prompt"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"data.train.mixture.1: columns"):
        concat_domains([datasets.Dataset.from_dict({"prompt": ["a"]}), datasets.Dataset.from_dict({"q": ["c"]})])


def test_arithmetic_sft_noise():
    from posttrain.data import arithmetic_sft

    clean = arithmetic_sft(20, low=1, high=9)
    assert arithmetic_sft(20, low=1, high=9, noise=0.0)["completion"] == clean["completion"] == clean["answer"]
    noisy = arithmetic_sft(20, low=1, high=9, noise=1.0)
    assert noisy["answer"] == clean["answer"]
    assert all(c != a and int(c) >= 0 for c, a in zip(noisy["completion"], noisy["answer"]))
    with pytest.raises(ValueError, match="noise"):
        arithmetic_sft(4, noise=1.5)


# ------------------------------------------------------------------------------------------------ recipe errors
BAD = [
    (TINY_SFT, ["data.train.mixture.0.weight=0.3", "data.train.mixture.1.weight=0.3"],
     "data.train.mixture.1.weight: the initial weights must sum to 1 (they sum to 0.6)"),
    (TINY_SFT, ["data.train.mixture.0.weight=1.0"],
     "data.train.mixture.1.weight: give an initial weight for every domain or for none"),
    (TINY_SFT, ["data.train.mixture.1.weight=-0.5", "data.train.mixture.0.weight=1.5"],
     "data.train.mixture.1.weight: Input should be greater than or equal to 0"),
    (TINY_SFT, ["data.train.mixture.1.domain=clean"], "data.train.mixture.1.domain: domain 'clean' is also"),
    (TINY_SFT, ["weighting.domains.0.name=nosuch"], "weighting.domains.0.name: unknown domain strategy 'nosuch'"),
    (TINY_SFT, ["weighting.domains.0.update_every=0"], "weighting.domains.0: update_every: Input should be"),
    (TINY_SFT, ["weighting.domains.0.mixing=0"], "weighting.domains.0: influence: mixing: Input should be"),
    (TINY_SFT, ["data.heldout=null"], "weighting.domains.0: influence needs a held-out set"),
    (TINY_SFT, ["weighting.domains.0.sharded_gradients=true"], "weighting.domains.0.sharded_gradients"),
    (TINY_GRPO, ["data.train.mixture.0.wieght=1"], "data.train.mixture.0.wieght: unknown key"),
    (ROOT / "recipes" / "tiny_sft.yaml", ["weighting.domains=[{name: fixed}]"],
     "weighting.domains: a domain strategy needs a data mixture"),
    (ROOT / "recipes" / "tiny_dpo.yaml", ["data.train={mixture: [{name: preferences, domain: a}]}"],
     "data.train.mixture: data mixtures are for algorithm 'sft' and 'grpo'"),
]


@pytest.mark.parametrize("recipe,overrides,expected", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_mixture_recipes_are_one_line_naming_the_key(recipe, overrides, expected):
    from posttrain.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_mixture_loads_and_builds_with_domain_ids():
    from posttrain.pipelines.checks import check_run
    from posttrain.recipes import load_recipe

    checked = check_run(load_recipe(TINY_GRPO), standalone=True)
    assert checked.domains == (["add", "mul"], None)
    ids = checked.train_ds["domain_id"]
    assert ids.count(0) == 48 and ids.count(1) == 8


def test_empty_domain_and_bad_heldout_are_one_line(tmp_path):
    from posttrain.errors import UserError
    from posttrain.pipelines.checks import check_run
    from posttrain.recipes import load_recipe

    sys.path.insert(0, str(Path(__file__).parent))
    r = load_recipe(TINY_GRPO, ["data.train.mixture.1={name: 'bad_builders:zero_rows', domain: mul}"], check_registries=False)
    with pytest.raises(UserError, match=r"^data.train.mixture.1: domain 'mul' is empty"):
        check_run(r, out=tmp_path / "x", standalone=True)
    r = load_recipe(TINY_GRPO, ["weighting.domains.0={name: influence}",
                                "data.heldout={name: arithmetic, args: {n: 4}}"])
    check_run(r, out=tmp_path / "x", standalone=True)  # prompt + answer: fine
    r = load_recipe(TINY_GRPO, ["weighting.domains.0={name: influence}",
                                "data.heldout={name: 'bad_builders:prompts_only'}"])
    with pytest.raises(UserError, match=r"^data.heldout: GRPO's held-out gradient"):
        check_run(r, out=tmp_path / "x", standalone=True)


def _cli(*args, timeout=600, extra_path=None):
    paths = [str(ROOT), str(ROOT / "tests")] + ([str(extra_path)] if extra_path else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_cli_bad_weights_exit_2_one_line(tmp_path):
    out = tmp_path / "run"
    res = _cli("run", str(TINY_SFT), f"output.dir={out}", "data.train.mixture.0.weight=0.9",
               "data.train.mixture.1.weight=0.3")
    assert res.returncode == 2 and "data.train.mixture.1.weight" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


# ------------------------------------------------------------------------------------------------ tiny runs
def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train_runtime" not in r]


@pytest.mark.slow
def test_tiny_sft_domains_adaptive_weights_move_fixed_stay(tmp_path):
    res = _cli("run", str(TINY_SFT), f"output.dir={tmp_path / 'a'}", "model.threads=1", "eval.enabled=false",
               "output.save_model=false")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(tmp_path / "a")
    w = [r["domain/clean/weight"] for r in rows]
    assert w[0] == 0.5 and len(set(w)) > 1                      # influence moves the mix after step 1
    for r in rows:
        assert r["domain/clean/weight"] + r["domain/noisy/weight"] == pytest.approx(1.0)
        assert r["domain/clean/share"] + r["domain/noisy/share"] == pytest.approx(1.0)
        assert all(math.isfinite(r[k]) for k in r if k.endswith("/loss"))
        assert "domain_weighting/influence/score/clean" in r
    assert (tmp_path / "a" / "domain_weights.png").exists()
    res = _cli("run", str(TINY_SFT), f"output.dir={tmp_path / 'b'}", "model.threads=1", "eval.enabled=false",
               "output.save_model=false", "weighting.domains.0={name: fixed}", "data.train.mixture.0.weight=0.25",
               "data.train.mixture.1.weight=0.75")
    assert res.returncode == 0, res.stderr[-3000:]
    assert {r["domain/clean/weight"] for r in _rows(tmp_path / "b")} == {0.25}


@pytest.mark.slow
def test_tiny_grpo_domains_temperature_cooldown_and_upweight(tmp_path):
    res = _cli("run", str(TINY_GRPO), f"output.dir={tmp_path / 'a'}", "model.threads=1", "eval.enabled=false",
               "output.save_model=false")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _rows(tmp_path / "a")
    w = [r["domain/add/weight"] for r in rows]
    # sizes (48, 8): T = 5 at step 0 -> p_add = 6^(1/5) / (6^(1/5) + 1); the cooldown to T = 1 raises it
    assert w[0] == pytest.approx(6 ** 0.2 / (6 ** 0.2 + 1)) and w[-1] > w[0]
    assert all(("domain/add/reward" in r) or ("domain/mul/reward" in r) for r in rows)
    res = _cli("run", str(TINY_GRPO), f"output.dir={tmp_path / 'b'}", "model.threads=1", "eval.enabled=false",
               "output.save_model=false", "weighting.domains.0={name: upweight, temperature: 5.0}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert {r["domain/add/weight"] for r in _rows(tmp_path / "b")} == {48 / 56}   # natural sampling


@pytest.mark.slow
def test_sft_domains_resume_is_exact(tmp_path):
    common = ["model.threads=1", "eval.enabled=false", "output.plots=false", "output.save_model=false",
              "train.lr_scheduler_type=constant", "train.save_steps=1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for args in ([f"output.dir={straight}", "train.max_steps=4"], [f"output.dir={resumed}", "train.max_steps=2"],
                 [f"output.dir={resumed}", "train.max_steps=4", "--resume"]):
        res = _cli("run", str(TINY_SFT), *common, *args)
        assert res.returncode == 0, res.stderr[-3000:]

    def step(out, n):
        return next(r for r in _rows(out) if r["step"] == n and "loss" in r)

    for n in (3, 4):
        a, b = step(straight, n), step(resumed, n)
        for key in ("loss", "grad_norm", "domain/clean/weight", "domain/clean/share", "domain/noisy/loss"):
            assert a[key] == b[key], (n, key)


PARITY_REWARD = "def token_parity(prompts, completions, completion_ids=None, **kw):\n" \
                "    return [float(sum(ids) % 2) for ids in completion_ids]\n"


@pytest.mark.slow
def test_grpo_domains_resume_is_exact(tmp_path):
    """3 steps + --resume to 4 equals 4 straight: influence every 2 steps (the resume falls between two updates, so
    the statistics since the last update, the weights and the sampler position all come from the checkpoint)."""
    (tmp_path / "grpo_parity.py").write_text(PARITY_REWARD)  # varies between samples of the random tiny model
    common = ["model.threads=1", "eval.enabled=false", "output.plots=false", "output.save_model=false",
              "train.lr_scheduler_type=constant", "train.save_steps=1", "rewards=[{name: 'grpo_parity:token_parity'}]",
              "weighting.domains.0={name: influence, update_every: 2, heldout_rows: 4}",
              "data.heldout={name: arithmetic, args: {n: 4, low: 1, high: 9, split: train, seed: 5}}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for args in ([f"output.dir={straight}", "train.max_steps=4"], [f"output.dir={resumed}", "train.max_steps=3"],
                 [f"output.dir={resumed}", "train.max_steps=4", "--resume"]):
        res = _cli("run", str(TINY_GRPO), *common, *args, extra_path=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]

    def step(out, n):
        return next(r for r in _rows(out) if r["step"] == n and "loss" in r)

    keys = ("loss", "grad_norm", "reward", "domain/add/weight", "domain/mul/weight", "domain/add/share")
    for n in (1, 2, 3, 4):
        a, b = step(straight, n), step(resumed, n)
        for key in keys + tuple(k for k in a if k.startswith(("domain/", "domain_weighting/"))):
            assert a.get(key) == b.get(key), (n, key)
    w = [step(straight, n)["domain/add/weight"] for n in (1, 2, 3, 4)]
    assert w[0] == w[1] and w[2] != w[1]    # the update at step 2 moved the mix used from step 3 on
    assert any(k.startswith("domain_weighting/influence/") for k in step(straight, 4))  # the update at step 4 ran


def test_shipped_domain_recipes_load():
    from posttrain.recipes import load_recipe

    for name, algo, strategy in (("sft_domains", "sft", "influence"), ("tiny_sft_domains", "sft", "influence"),
                                 ("grpo_domains", "grpo", "influence"), ("tiny_grpo_domains", "grpo", "temperature")):
        r = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        assert r.algorithm == algo and len(r.data.train.mixture) == 2 and r.weighting.domains[0].name == strategy
