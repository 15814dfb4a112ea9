"""Per-domain held-out evaluation: ``data.eval: {mixture: [...]}`` (or a ``domain`` column), ``by_domain`` in the
evaluation (overall metrics unchanged), one-line recipe errors, and the comparison harness's ``<metric>/<domain>``."""
import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
from datasets import Dataset

from posttrain.evaluation import by_domain, describe_domains, evaluate, score_summary

ROOT = Path(__file__).resolve().parents[1]
TINY_GRPO = ROOT / "recipes" / "tiny_grpo_domains.yaml"
OLD_KEYS = {"accuracy", "mean_score", "n", "n_scored", "truncated_fraction", "seconds", "decoding", "item_scores",
            "examples"}


# ------------------------------------------------------------------------------------------------ pure summaries
def test_score_summary_and_by_domain_hand_computed():
    scores = [1.0, 0.5, float("nan"), 1.0, 0.0]
    trunc = [False, True, True, False, False]
    s = score_summary(scores, trunc, 1.0)
    # 2 of 5 items reach 1.0 (NaN counts as wrong); mean over the 4 finite scores = 2.5 / 4
    assert s == {"accuracy": 0.4, "mean_score": 0.625, "n": 5, "n_scored": 4, "truncated_fraction": 0.4}
    per = by_domain(scores, trunc, ["b", "a", "b", "a", "a"], 1.0)
    assert list(per) == ["b", "a"]                                  # order of first appearance
    assert per["b"] == {"accuracy": 0.5, "mean_score": 1.0, "n": 2, "n_scored": 1, "truncated_fraction": 0.5}
    assert per["a"] == {"accuracy": 1 / 3, "mean_score": 0.5, "n": 3, "n_scored": 3, "truncated_fraction": 1 / 3}
    assert score_summary([float("nan")], [True], 1.0)["mean_score"] is None
    assert describe_domains({"by_domain": per}) == "; b 0.500 (n=2), a 0.333 (n=3)" and describe_domains(s) == ""


# ------------------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def tiny(one_torch_thread):
    from posttrain.models import load_tiny_model

    return load_tiny_model()


def _length_reward(prompts, completions, answer, **kw):
    # depends on the reply and the item (the tiny random model's replies all have the same length), so the
    # scores differ between items and domains
    return [float((len(c[0]["content"] if isinstance(c, list) else c) + int(a)) % 3)
            for c, a in zip(completions, answer)]


def test_domain_column_adds_by_domain_and_keeps_the_overall_metrics(tiny):
    from posttrain.data import arithmetic_problems

    model, tok = tiny
    add = arithmetic_problems(6, low=1, high=9, split="heldout")
    mul = arithmetic_problems(4, low=1, high=9, op="*", split="heldout")
    from datasets import concatenate_datasets

    plain = concatenate_datasets([add, mul])
    kw = dict(max_new_tokens=4, batch_size=4, success_threshold=2.0)
    before = evaluate(model, tok, plain, _length_reward, **kw)
    assert set(before) == OLD_KEYS                                   # a single dataset: exactly today's keys
    tagged = plain.add_column("domain", ["add"] * 6 + ["mul"] * 4)
    got = evaluate(model, tok, tagged, _length_reward, **kw)
    assert set(got) == OLD_KEYS | {"by_domain", "item_domains"}
    for k in OLD_KEYS - {"seconds"}:                                 # same overall numbers
        assert got[k] == before[k], k
    assert got["item_domains"] == ["add"] * 6 + ["mul"] * 4
    items = got["item_scores"]
    for d, rows in (("add", range(6)), ("mul", range(6, 10))):
        sc = [items[i] for i in rows]
        m = got["by_domain"][d]
        assert m["n"] == len(sc) and m["accuracy"] == sum(s >= 2.0 for s in sc) / len(sc)
        assert m["mean_score"] == pytest.approx(sum(sc) / len(sc))
    assert got["by_domain"]["add"]["mean_score"] != got["by_domain"]["mul"]["mean_score"]   # a case that can fail


# ------------------------------------------------------------------------------------------------ recipe errors
BAD = [
    (["data.eval.mixture.1.domain=add"], "data.eval.mixture.1.domain: domain 'add' is also data.eval.mixture.0's"),
    (["data.eval.mixture.0.weight=0.5"], "data.eval.mixture.0.weight: unknown key"),
    (["data.eval.mixture.1.domain="], "data.eval.mixture.1.domain: String should match pattern"),
    (["data.eval.mixture=[]"], "data.eval.mixture: List should have at least 1 item"),
    (["data.eval.mixture.1.args.bogus=1"], "data.eval.mixture.1.args: unknown argument 'bogus'"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_eval_mixture_is_one_line_naming_the_key(overrides, expected):
    from posttrain.recipes import RecipeError, load_recipe

    with pytest.raises(RecipeError) as err:
        load_recipe(TINY_GRPO, overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_eval_mixture_builds_with_domain_names_and_bad_parts_are_one_line(tmp_path):
    from posttrain.errors import UserError
    from posttrain.pipelines.checks import check_run
    from posttrain.recipes import load_recipe

    checked = check_run(load_recipe(TINY_GRPO), out=tmp_path / "x", standalone=True)
    assert checked.eval_ds["domain"] == ["add"] * 8 + ["mul"] * 4
    sys.path.insert(0, str(Path(__file__).parent))
    for entry, msg in (("{name: 'bad_builders:zero_rows', domain: mul}", "domain 'mul' is empty"),
                       ("{name: 'bad_builders:no_prompt', domain: mul}", "the dataset has no column 'prompt'")):
        r = load_recipe(TINY_GRPO, [f"data.eval.mixture.1={entry}"], check_registries=False)
        with pytest.raises(UserError, match=rf"^data.eval.mixture.1: {msg}"):
            check_run(r, out=tmp_path / "x", standalone=True)
    assert not (tmp_path / "x").exists()


def test_cli_repeated_eval_domain_exit_2_one_line(tmp_path):
    import subprocess

    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "posttrain", "run", str(TINY_GRPO), f"output.dir={out}",
                          "data.eval.mixture.1.domain=add"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2 and "data.eval.mixture.1.domain" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


# ------------------------------------------------------------------------------------------------ compare harness
SPEC = """
name: fakedom
baseline: plain
seeds: [0, 1]
arms:
  - {name: plain, recipe: tiny_grpo_domains}
  - {name: mixed, recipe: tiny_grpo_domains, overrides: [train.learning_rate=0.002]}
threads: 1
bootstrap_resamples: 500
"""

#           add items (4)      mul items (4)
CORRECT = {"plain": [1, 0, 0, 0, 1, 1, 0, 0], "mixed": [1, 1, 1, 0, 1, 1, 0, 0]}


def _write_runs(plan):
    for r in plan.runs:
        r.status = "ok"
        r.out.mkdir(parents=True)
        c = CORRECT[r.arm]
        doms = ["add"] * 4 + ["mul"] * 4
        per = {d: {"accuracy": sum(c[i] for i in range(8) if doms[i] == d) / 4, "n": 4} for d in ("add", "mul")}
        after = {"accuracy": sum(c) / 8, "mean_score": sum(c) / 8, "n": 8, "truncated_fraction": 0.0,
                 "item_scores": [float(x) for x in c], "item_domains": doms,
                 "by_domain": {d: {**m, "mean_score": m["accuracy"], "truncated_fraction": 0.0} for d, m in per.items()}}
        before = {"accuracy": 0.125, "mean_score": 0.125, "n": 8, "truncated_fraction": 0.0,
                  "by_domain": {"add": {"accuracy": 0.25, "n": 4}, "mul": {"accuracy": 0.0, "n": 4}}}
        (r.out / "summary.json").write_text(json.dumps({"eval": {"before": before, "after": after},
                                                        "train_seconds": 1.0, "global_step": 2}))


def test_report_has_per_domain_metrics_with_item_bootstrap(tmp_path):
    from posttrain.compare import make_plan, report

    spec = tmp_path / "fakedom.yaml"
    spec.write_text(textwrap.dedent(SPEC) + "primary_metric: accuracy/add\n")
    plan = make_plan(spec, runs_dir=tmp_path / "runs")
    _write_runs(plan)
    collected = [report.collect_run(plan, r) for r in plan.runs]
    a = report.analyse(plan, collected)
    assert a["metrics"][:2] == ["accuracy/add", "accuracy"]
    assert {"accuracy/mul", "mean_score/add", "truncated_fraction/mul"} <= set(a["metrics"])
    arms = a["arms"]
    # plain: add 1/4, mul 2/4 on both seeds; mixed: add 3/4, mul 2/4
    assert arms["plain"]["metrics"]["accuracy/add"]["mean"] == pytest.approx(0.25)
    assert arms["mixed"]["metrics"]["accuracy/add"]["mean"] == pytest.approx(0.75)
    assert arms["plain"]["metrics"]["accuracy/add"]["method"] == "bootstrap over seeds and items"
    assert arms["plain"]["before"]["accuracy/add"] == 0.25 and arms["plain"]["before"]["accuracy/mul"] == 0.0
    d_add = a["differences"]["mixed"]["accuracy/add"]
    # per add item the difference is (0, 1, 1, 0) on both seeds: mean 0.5, the item bootstrap gives width
    assert d_add["method"] == "paired bootstrap over seeds and held-out items" and d_add["n_items"] == 4
    assert d_add["diff"] == pytest.approx(0.5) and 0.0 <= d_add["lo"] < 0.5 < d_add["hi"] <= 1.0
    d_mul = a["differences"]["mixed"]["accuracy/mul"]
    assert d_mul["diff"] == 0.0 and d_mul["lo"] == 0.0 and d_mul["hi"] == 0.0   # identical items: no difference
    assert a["differences"]["mixed"]["accuracy"]["diff"] == pytest.approx(0.25) and \
        a["differences"]["mixed"]["accuracy"]["n_items"] == 8
    md = report.render_markdown(plan, a, None)
    assert "## Headline: accuracy/add" in md and "| mixed − plain | accuracy/mul | +0.000 [0.000, 0.000] |" in md
    assert "| arm | runs | accuracy/add before | accuracy/add | accuracy |" in md
    assert "| plain | 2/2 | 0.250 | 0.250 [" in md


def test_per_domain_metric_names_in_a_spec():
    from posttrain.compare.spec import is_domain_metric

    assert is_domain_metric("accuracy/add") and is_domain_metric("truncated_fraction/a.b-c")
    assert not is_domain_metric("accuracy") and not is_domain_metric("entropy_auc/add")
    assert not is_domain_metric("accuracy/") and not is_domain_metric("accuracy/-x")


def test_posttrain_eval_and_generate_take_the_eval_mixture(capsys, one_torch_thread):
    from posttrain.cli import main

    capsys.readouterr()
    assert main(["eval", "tiny_grpo_domains", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "  n 12   accuracy" in out and "  add: n 8   accuracy" in out and "  mul: n 4   accuracy" in out
    assert main(["eval", "tiny_grpo_domains", "--threads", "1", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)["prompts"]
    assert {d: m["n"] for d, m in p["by_domain"].items()} == {"add": 8, "mul": 4} and p["n"] == 12
    assert main(["generate", "tiny_grpo_domains", "--from-eval", "2", "--json", "--threads", "1",
                 "--max-new-tokens", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_concat_sets_domain_names_and_refuses_a_domain_column():
    from posttrain.data.mixture import concat_domains

    a, b = Dataset.from_dict({"prompt": ["x", "y"]}), Dataset.from_dict({"prompt": ["z"]})
    assert concat_domains([a, b], column="domain", labels=["p", "q"])["domain"] == ["p", "p", "q"]
    assert concat_domains([a, b])["domain_id"] == [0, 0, 1]
    with pytest.raises(ValueError, match=r"^data.eval.mixture.0: the dataset has a 'domain' column"):
        concat_domains([a.add_column("domain", ["u", "v"]), b], "data.eval.mixture", column="domain")
