"""Fixed objective mixes vs dynamic objective weighting (hypervolume, gradient, lagrangian, recap) on one multi-objective demo.

Every configuration runs the same recipe (default `recipes/multiobj_arithmetic.yaml`), the same seeds and the same
step budget, each run in its own `posttrain run` process; only `weighting.objectives` differs. After each run the
merged model is evaluated greedily on the recipe's held-out prompts (`data.eval`, first `--eval-prompts`) and
*every* reward of the recipe scores every completion: one performance vector per run (mean reward per objective).
The base model gets the same evaluation. Written to `docs/results/` (or `--out-dir`):

* `objective_weighting<tag>.md`: per configuration mean and spread over seeds of each objective, the hypervolume of
  the configuration's per-seed points, and whether its mean point is on the Pareto front of all configurations;
  every run's vector; the settings. Hypervolume reference point: the origin (every objective is a reward to
  maximise; the demos' rewards lie in [0, 1]) -- a point with a non-positive objective spans no volume.
* `objective_weighting<tag>.png`: pairwise scatter of the objectives (each run a marker, the base model a star).
* `objective_weighting<tag>.json`: the raw vectors.
* `objective_weighting<tag>_weights.png`: each dynamic strategy's objective weights over the training steps (the
  first and last weights of every run are also in the Markdown).

    python scripts/compare_objective_weighting.py --seeds 0 1                      # the demo budget (slow)
    python scripts/compare_objective_weighting.py --recipe recipes/tiny_multiobj_arithmetic.yaml --seeds 0 1 \\
        --tag _smoke --set model.threads=1                                         # smoke test, seconds
    python scripts/compare_objective_weighting.py --report-only                    # rewrite from finished runs

Runs land in `runs/compare_objective_weighting/<config>-s<seed>/`; runs with an `objective_eval.json` are reused
(the merged model is deleted after its evaluation unless `--keep-models`).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> override of weighting.objectives (None: keep the recipe's own argument block for that strategy)
DEFAULT_CONFIGS = ["fixed:1,1,1", "fixed:2,1,1", "fixed:1,2,2", "hypervolume", "gradient", "lagrangian"]


def config_override(config: str) -> list[str]:
    if config.startswith("fixed:"):
        weights = [float(x) for x in config.split(":", 1)[1].split(",")]
        return [f"weighting.objectives={{name: fixed, weights: {weights}}}"]
    return [f"weighting.objectives.name={config}"]


def run_dir(runs_dir: Path, config: str, seed: int) -> Path:
    return runs_dir / f"{config.replace(':', '-').replace(',', '_')}-s{seed}"


def run(recipe: str, config: str, seed: int, out: Path, extra: list[str]) -> None:
    if (out / "objective_eval.json").exists() or (out / "model" / "config.json").exists():
        return
    cmd = [sys.executable, "-m", "posttrain", "run", recipe, f"seed={seed}", f"output.dir={out}",
           "output.overwrite=true", "output.save_model=true", "eval.enabled=false", *config_override(config), *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def evaluate_objectives(model_dir_or_name: str, recipe, n_prompts: int) -> dict:
    """Greedy completions of the first n held-out prompts, scored by every reward of the recipe."""
    import torch

    from posttrain.evaluation import generate_greedy
    from posttrain.models import load_model_and_tokenizer
    from posttrain.run import build_dataset, build_rewards

    model, tok = load_model_and_tokenizer(model_dir_or_name, dtype=torch.float32, cache_dir=recipe.model.cache_dir)
    ds = build_dataset(recipe.data.eval, "data.eval")
    ds = ds.select(range(min(n_prompts, len(ds))))
    prompts = list(ds["prompt"])
    max_new = int(recipe.train.get("max_completion_length", recipe.eval.max_new_tokens))
    texts, ids = generate_greedy(model, tok, prompts, max_new_tokens=max_new, batch_size=recipe.eval.batch_size)
    completions = [[{"role": "assistant", "content": t}] for t in texts] if isinstance(prompts[0], list) else texts
    columns = {c: list(ds[c]) for c in ds.column_names if c != "prompt"}
    scores = {}
    for fn in build_rewards(recipe.rewards, "rewards", tok):
        vals = fn(prompts=prompts, completions=completions, completion_ids=ids, **columns)
        vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
        scores[fn.__name__] = sum(vals) / len(vals) if vals else float("nan")
    return {"scores": scores, "n": len(prompts), "examples": texts[:3]}


def weight_trajectory(run_dir: Path, names: list[str]) -> list[tuple[int, list[float]]]:
    """``[(step, [w_1..w_K])]`` from the run's ``metrics.jsonl`` (``reward_weights/<name>``, logged every step)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if all(f"reward_weights/{n}" in row for n in names):
            out.append((int(row.get("step", len(out) + 1)), [float(row[f"reward_weights/{n}"]) for n in names]))
    return out


def _mean_sd(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def report(results: dict, base: dict, names: list[str], out_md: Path, out_png: Path, out_json: Path,
           settings: str, trajectories: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posttrain.reporting import write_report
    from posttrain.weighting.objectives import hypervolume, pareto_front

    ref = [0.0] * len(names)
    maximize = [True] * len(names)
    means = {c: [statistics.mean(r["scores"][n] for r in runs.values()) for n in names] for c, runs in results.items()}
    front = pareto_front(list(means.values()), maximize)
    front_keys = {tuple(p) for p in front}
    lines = ["# Objective weighting: fixed mixes vs dynamic strategies\n", settings, "",
             f"Objectives (all maximised): {', '.join(names)}. Held-out greedy evaluation, every objective scored on "
             f"every completion. Hypervolume reference point: the origin.", "",
             "| configuration | " + " | ".join(names) + " | HV of its seeds' points | mean on the Pareto front |",
             "|---|" + "---|" * (len(names) + 2)]
    base_pt = [base["scores"][n] for n in names]
    lines.append("| base model | " + " | ".join(f"{v:.3f}" for v in base_pt)
                 + f" | {hypervolume([base_pt], ref, maximize):.4f} | |")
    for c, runs in results.items():
        pts = [[r["scores"][n] for n in names] for r in runs.values()]
        cells = []
        for k in range(len(names)):
            m, sd = _mean_sd([p[k] for p in pts])
            cells.append(f"{m:.3f} ± {sd:.3f}")
        hv = hypervolume(pts, ref, maximize)
        on = "yes" if tuple(means[c]) in front_keys else "no"
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {hv:.4f} | {on} |")
    lines += ["", "Every run:", "", "| configuration | seed | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for c, runs in results.items():
        for seed, r in sorted(runs.items()):
            lines.append(f"| {c} | {seed} | " + " | ".join(f"{r['scores'][n]:.3f}" for n in names) + " |")
    trajectories = trajectories or {}
    if trajectories:
        lines += ["", "Objective weights (`reward_weights/<name>`, logged every step) at the first and the last step,",
                  "per run:", "", "| configuration | seed | first step | last step |", "|---|---|---|---|"]
        for c, per_seed in trajectories.items():
            for seed, traj in sorted(per_seed.items()):
                if traj:
                    fmt = lambda w: "[" + ", ".join(f"{v:.3f}" for v in w) + "]"  # noqa: E731
                    lines.append(f"| {c} | {seed} | {fmt(traj[0][1])} | {fmt(traj[-1][1])} (step {traj[-1][0]}) |")
    lines += ["", f"![pairwise objectives]({out_png.name})", ""]
    dynamic = {c: t for c, t in trajectories.items() if any(len({tuple(w) for _, w in tr}) > 1 for tr in t.values())}
    if dynamic:
        weights_png = out_png.with_name(out_png.stem + "_weights.png")
        lines += [f"![objective weights during training]({weights_png.name})", ""]
    write_report(out_md, "\n".join(lines))
    out_json.write_text(json.dumps({"base": base, "runs": results, "objectives": names}, indent=2, default=str))

    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))] or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4), squeeze=False)
    markers = "osD^vP*X"
    for ax, (i, j) in zip(axes.flat, pairs):
        for ci, (c, runs) in enumerate(results.items()):
            xs = [r["scores"][names[i]] for r in runs.values()]
            ys = [r["scores"][names[j]] for r in runs.values()]
            ax.scatter(xs, ys, marker=markers[ci % len(markers)], label=c, alpha=0.8)
        ax.scatter([base_pt[i]], [base_pt[j]], marker="*", s=160, color="k", label="base model")
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    if dynamic:
        fig, axes = plt.subplots(1, len(dynamic), figsize=(4.2 * len(dynamic), 3.6), squeeze=False)
        for ax, (c, per_seed) in zip(axes.flat, dynamic.items()):
            for seed, traj in sorted(per_seed.items()):
                for k, n in enumerate(names):
                    ax.plot([st for st, _ in traj], [w[k] for _, w in traj], color=f"C{k}",
                            ls="-" if seed == min(per_seed) else "--", label=f"{n} (s{seed})")
            ax.set_title(c)
            ax.set_xlabel("step")
            ax.set_ylim(0, 1)
        axes.flat[0].set_ylabel("objective weight")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(weights_png, dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/multiobj_arithmetic.yaml")
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                    help="fixed:w1,w2,... | hypervolume | gradient | lagrangian | recap")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    ap.add_argument("--runs-dir", default="runs/compare_objective_weighting")
    ap.add_argument("--out-dir", default="docs/results")
    ap.add_argument("--tag", default="", help="suffix of the report files, e.g. _smoke")
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()

    from posttrain.recipes import load_recipe
    from posttrain.reporting import report_notes_problem

    if msg := report_notes_problem(ROOT / args.out_dir / f"objective_weighting{args.tag}.md"):  # before hours of runs
        ap.error(msg)
    recipe = load_recipe(ROOT / args.recipe, args.set)
    if recipe.data.eval is None:
        raise SystemExit(f"{args.recipe}: needs data.eval (held-out prompts)")
    runs_dir = ROOT / args.runs_dir / Path(args.recipe).stem
    results: dict = {}
    for config in args.configs:
        for seed in args.seeds:
            out = run_dir(runs_dir, config, seed)
            if not args.report_only:
                run(args.recipe, config, seed, out, args.set)
            ev_path = out / "objective_eval.json"
            if not ev_path.exists():
                if not (out / "model" / "config.json").exists():
                    print(f"missing run {out}; skipped", flush=True)
                    continue
                ev = evaluate_objectives(str(out / "model"), recipe, args.eval_prompts)
                ev_path.write_text(json.dumps(ev, indent=2))
                if not args.keep_models:
                    shutil.rmtree(out / "model")
            results.setdefault(config, {})[seed] = json.loads(ev_path.read_text())
    base_path = runs_dir / "base_eval.json"
    if not base_path.exists():
        base_path.parent.mkdir(parents=True, exist_ok=True)
        base_path.write_text(json.dumps(evaluate_objectives(recipe.model.name, recipe, args.eval_prompts), indent=2))
    base = json.loads(base_path.read_text())
    names = list(base["scores"])
    steps = recipe.train.get("max_steps")
    settings = (f"Recipe `{args.recipe}` ({recipe.model.name}), {steps} steps, seeds {args.seeds}, "
                f"{base['n']} held-out prompts; overrides: {' '.join(args.set) or '(none)'}. "
                f"Generated by `scripts/compare_objective_weighting.py`.")
    if recipe.model.name.startswith("tiny") or (isinstance(steps, int) and steps < 10):
        settings += ("\n\n**Smoke test only**: a random tiny model or a few steps prove that the pipeline runs; "
                     "the numbers say nothing about the strategies.")
    out_dir = ROOT / args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"objective_weighting{args.tag}"
    trajectories = {c: {seed: weight_trajectory(run_dir(runs_dir, c, seed), names) for seed in runs}
                    for c, runs in results.items()}
    report(results, base, names, out_dir / f"{stem}.md", out_dir / f"{stem}.png", out_dir / f"{stem}.json", settings,
           trajectories)
    print(f"wrote {out_dir / (stem + '.md')}", flush=True)


if __name__ == "__main__":
    main()
