"""``posttrain launch --nproc 2`` with a data mixture: the tiny GRPO domains recipe (influence mixing, so the weights
depend on all-reduced gradients) through the real CLI, DeepSpeed launcher (ZeRO-2), 2 processes over gloo.

Each rank dumps the units its domain sampler drew and the domain ids of its own rows per batch
(``POSTTRAIN_DEBUG_DOMAIN_DUMP``). Checked: both ranks draw the same unit stream (domains and weights), each takes
its own prompt of every unit (disjoint slices of one stream), the weights in use agree on both ranks and with the
logged ``domain/<name>/weight``, the checkpointed domain state is identical, the ranks end with identical trained
weights, and the evaluation after training reports both held-out domains.
"""
import json

import pytest
import torch
from launch_helpers import launch_two

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

G = 4  # tiny_grpo_domains: num_generations 4, per_device_train_batch_size 4 -> one prompt per rank and step


def test_mixture_two_processes_one_domain_stream(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_DEBUG_DOMAIN_DUMP", str(tmp_path / "domains"))
    out, dumps = launch_two(
        tmp_path, "recipes/tiny_grpo_domains.yaml", "rewards=[{name: 'mp_reward:token_parity'}]",
        "eval.reward={name: math_answer}", "distributed.zero_stage=2", "train.max_steps=2", "train.save_steps=2",
        "weighting.domains.0={name: influence, update_every: 1, heldout_rows: 4}",
        "data.heldout={name: arithmetic, args: {n: 4, low: 1, high: 9, split: train, seed: 5}}",
        timeout=300, with_parity_reward=True)
    d0, d1 = (json.loads((tmp_path / "domains" / f"domains_rank{r}.json").read_text()) for r in (0, 1))
    assert d0["units"] and d0["units"] == d1["units"]                      # one stream: domains and weights
    units = {u["unit"]: u["domains"] for u in d0["units"]}
    assert all(len(v) == 2 for v in units.values())                       # 2 prompts per generation batch
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["domain/add/weight"] for r in rows if "domain/add/weight" in r}
    assert sorted(logged) == [1, 2]
    for k, (b0, b1) in enumerate(zip(d0["batches"], d1["batches"], strict=True)):
        assert b0["step"] == b1["step"] == k and b0["weights"] == b1["weights"]
        assert b0["weights"][0] == pytest.approx(logged[k + 1])           # the logged weight is the one in use
        drawn = units[k]                                                  # one unit per step (spg = 1)
        assert b0["domain_ids"] == [drawn[0]] * G and b1["domain_ids"] == [drawn[1]] * G   # rank r: prompt r
    assert len(d0["batches"]) == 2
    assert d0["batches"][1]["weights"] != d0["batches"][0]["weights"]     # influence moved the mix after step 1
    s0, s1 = (torch.load(out / "trainer" / "checkpoint-2" / f"posttrain_state_rank{r}.pt", weights_only=False)
              for r in (0, 1))
    a, b = s0["domains"], s1["domains"]
    assert a["weights_D"] == b["weights_D"] and torch.equal(a["stats"], b["stats"])
    assert a["sampler"]["snapshot"]["cursors_D"] == b["sampler"]["snapshot"]["cursors_D"]
    assert torch.equal(a["generator"], b["generator"])
    end0, end1 = dumps["0_end"], dumps["1_end"]
    assert end0.keys() == end1.keys() and all(torch.equal(end0[n], end1[n]) for n in end0)
    assert any(not torch.equal(end0[n], dumps["0_begin"][n]) for n in end0), "training did not change any weight"
    after = json.loads((out / "summary.json").read_text())["eval"]["after"]
    assert after["n"] == 12 and {d: m["n"] for d, m in after["by_domain"].items()} == {"add": 8, "mul": 4}
