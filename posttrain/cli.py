"""``posttrain`` command line: run | launch | validate | recipes | eval | generate.  Thin: parsing and error reporting only.

User-input problems (bad recipe, missing file, unwritable output dir, …) print one line
``posttrain: error: …`` and exit with code 2 — never a traceback.  A run that stops itself after saving a
checkpoint (too many failed rewards, repeated non-finite steps) prints ``posttrain: stopped: …``, exit code 3.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from posttrain.errors import RunStopped, UserError

EXIT_USAGE = 2
EXIT_STOPPED = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain", description="Post-training with reweighting (GRPO / DPO families).")
    # The deepspeed launcher inserts --local_rank=N before the subcommand (environment.md): accept it here.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="train with a recipe: posttrain run RECIPE [key.path=value ...]")
    r.add_argument("recipe", help="recipe YAML file, or the name of a shipped recipe")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=5 output.dir=/tmp/x")
    r.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in output.dir")
    r.add_argument("--trl-config", "--trl_config", default=None, metavar="FILE",
                   help="a TRL YAML config (as for `trl grpo --config`): its fields override the recipe's "
                        "(model_name_or_path -> model.name, output_dir -> output.dir, others -> train.*)")
    r.add_argument("--verbose", action="store_true",
                   help="print every logged metrics dict under the progress bar (default: a short postfix; the "
                   "full dicts are always in metrics.jsonl)")
    la = sub.add_parser("launch", help="run a recipe on N processes with the DeepSpeed launcher: "
                        "posttrain launch --nproc N RECIPE [key.path=value ...]")
    la.add_argument("--nproc", type=int, required=True, help="processes per node (the launcher's --num_gpus)")
    la.add_argument("--hostfile", default=None, help="DeepSpeed hostfile ('host slots=N' per line) for many nodes")
    la.add_argument("--master_addr", "--master-addr", default=None, help="address of rank 0 (many nodes)")
    la.add_argument("--master_port", "--master-port", type=int, default=None,
                    help="rendezvous port (default: a free port on this machine)")
    la.add_argument("--dry-run", "--dry_run", action="store_true", help="print the launcher command, do not run it")
    la.add_argument("--resume", action="store_true", help="passed to `posttrain run`")
    la.add_argument("--verbose", action="store_true", help="as `posttrain run --verbose` (on every process)")
    la.add_argument("--trl-config", "--trl_config", default=None, metavar="FILE", help="as for `posttrain run`")
    la.add_argument("recipe")
    la.add_argument("overrides", nargs="*")
    v = sub.add_parser("validate", help="check a recipe (and overrides) without running it")
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*")
    v.add_argument("--trl-config", "--trl_config", default=None, metavar="FILE", help="as for `posttrain run`")
    sub.add_parser("recipes", help="list the shipped recipes")
    sub.add_parser("compare", help="paired A/B comparison of recipes over seeds: posttrain compare SPEC.yaml "
                   "[--jobs N] [--report-only] (docs/compare.md)", add_help=False)
    st = sub.add_parser("strategies", help="list every registered strategy by kind (token, sequence, advantage, "
                        "objective, pair) with its one-line description")
    st.add_argument("--args", action="store_true", help="also list each strategy's arguments with their defaults")
    target_help = ("a run directory (its model/ and recipe.resolved.yaml), a model directory, or a recipe file / "
                   "shipped recipe name (its base model)")
    e = sub.add_parser("eval", help="evaluate a model: greedy replies to the recipe's held-out prompts scored as in "
                       "a run; for DPO recipes also held-out pair accuracy / margin against the base model")
    e.add_argument("target", help=target_help)
    e.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. eval.max_new_tokens=8")
    e.add_argument("--recipe", default=None, help="recipe for a model directory (eval set, scoring reward)")
    e.add_argument("--data", default=None, help="a prompt file (prompt column [+ answer ...]) or a pair file "
                   "(prompt, chosen, rejected) instead of the recipe's eval set")
    e.add_argument("--n", type=int, default=None, help="evaluate only the first N prompts / pairs")
    e.add_argument("--pairs", action=argparse.BooleanOptionalAction, default=None,
                   help="compute preference-pair metrics (default: for DPO recipes and pair files)")
    e.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=None)
    e.add_argument("--batch-size", "--batch_size", type=int, default=None)
    e.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's model.threads)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--out", default=None, help="also write the JSON result to this file")
    g = sub.add_parser("generate", help="sample (or greedy) replies from a model for prompts given on the command "
                       "line, in a file, or the recipe's eval prompts")
    g.add_argument("target", help=target_help)
    g.add_argument("prompts", nargs="*", help="user messages (rendered with the chat template)")
    g.add_argument("--recipe", default=None, help="recipe for a model directory (sampling settings, eval prompts)")
    g.add_argument("--file", default=None, help=".txt (one prompt per line) or a .jsonl/.json/.csv/.parquet "
                   "prompt file (prompt column: text or messages, pre-fills included)")
    g.add_argument("--from-eval", "--from_eval", type=int, default=None, metavar="N",
                   help="the first N prompts of the recipe's data.eval (with their pre-fills); the default when "
                   "no prompt is given")
    g.add_argument("--system", default=None, help="system message for command-line / .txt prompts")
    g.add_argument("--prefill", default=None, help="start of the assistant reply for command-line / .txt prompts")
    g.add_argument("--plain", action="store_true", help="send command-line / .txt prompts as raw text, no chat "
                   "template")
    g.add_argument("--samples", type=int, default=1, help="replies per prompt (sampling)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding (one reply per prompt)")
    g.add_argument("--temperature", type=float, default=None,
                   help="default: the recipe's train.temperature, else 0.7")
    g.add_argument("--top-p", "--top_p", type=float, default=None, help="default: the recipe's train.top_p, else 0.9")
    g.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=None,
                   help="default: the recipe's train.max_completion_length, else 64")
    g.add_argument("--batch-size", "--batch_size", type=int, default=8)
    g.add_argument("--seed", type=int, default=None, help="default: the recipe's seed, else 0")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--em-inf", "--em_inf", default=None, metavar="SETTINGS",
                   help="EM-INF decoding (arXiv 2505.15134): 'recipe' (the recipe's eval.em_inf), 'default' (the "
                   "official math-script settings) or a YAML mapping of eval.em_inf keys, e.g. "
                   "'{mode: logits, n_grad_steps: 5}'; --temperature / --greedy then apply after the adjustment")
    g.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _resolve_recipe_path(arg: str) -> str:
    """A recipe file as given; else the shipped recipe of that name (``tiny_grpo``); else ``arg`` unchanged (the
    loader then reports the missing file)."""
    from posttrain.recipes.loader import shipped_recipe_path

    if os.path.exists(arg) or os.sep in arg:
        return arg
    shipped = shipped_recipe_path(arg)
    return str(shipped) if shipped is not None else arg


def add_user_import_paths(recipe_path: Optional[str] = None) -> List[str]:
    """Make the user's own modules importable by the ``pkg.mod:fn`` names of a recipe (rewards, datasets,
    strategies), whichever way posttrain was started.

    ``python -m posttrain`` puts the current directory first on ``sys.path``; the ``posttrain`` console script
    does not (it puts the script's own directory there).  So that ``posttrain run r.yaml`` and ``python -m
    posttrain run r.yaml`` import the same ``my_rewards`` from the directory the user works in, the current
    directory is put first, then the directory of the recipe file (so a recipe kept next to its reward module
    works from anywhere).  The recipe's directory is skipped for shipped recipes.  Returns the added entries.
    """
    from posttrain.recipes.loader import RECIPES_DIR

    wanted = [os.getcwd()]
    if recipe_path and os.path.isfile(recipe_path):
        rdir = os.path.dirname(os.path.abspath(recipe_path))
        if os.path.realpath(rdir) != os.path.realpath(RECIPES_DIR):
            wanted.append(rdir)

    def index_of(d: str) -> int:
        real = os.path.realpath(d)
        return next((i for i, p in enumerate(sys.path) if os.path.realpath(p or os.curdir) == real), -1)

    added = []
    at = 0
    for d in dict.fromkeys(wanted):
        i = index_of(d)
        if i < 0:
            sys.path.insert(at, d)
            added.append(d)
            i = at
        at = i + 1
    return added


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:  # its own parser: posttrain compare SPEC.yaml [--jobs N] [--report-only]
        from posttrain.compare import cli_main

        return cli_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if args.command is None:
        _parser().print_help()
        return EXIT_USAGE
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("posttrain: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `posttrain recipes | head`: the reader left; no traceback, no second error at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    except UserError as exc:
        _close_progress_bars()
        print(f"posttrain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunStopped as exc:
        _close_progress_bars()
        print(f"posttrain: stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED


def _close_progress_bars() -> None:
    """Close open tqdm bars now, so that our one-line message is the last line (not a bar redrawn at exit)."""
    tqdm_mod = sys.modules.get("tqdm")
    if tqdm_mod is None:
        return
    for bar in list(getattr(tqdm_mod.tqdm, "_instances", [])):
        bar.close()


def _dispatch(args) -> int:
    from posttrain.recipes import RecipeError, load_recipe, shipped_recipes

    if args.command == "recipes":
        rows = shipped_recipes()
        width = max((len(n) for n, _, _ in rows), default=0)
        for name, desc, _ in rows:
            print(f"{name:<{width}}  {desc}")
        return 0
    if args.command == "strategies":
        from posttrain.weighting.catalog import print_strategies

        print_strategies(with_args=args.args)
        return 0
    if args.command in ("eval", "generate"):
        from posttrain.console import quiet_known_noise, use_compact_progress

        quiet_known_noise()
        use_compact_progress(True)  # no per-load "Loading weights" bars around a short table
        return _eval_or_generate(args)
    from posttrain.console import VERBOSE_ENV, quiet_known_noise

    quiet_known_noise()  # before anything imports deepspeed
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"  # inherited by the processes `launch` starts
    path = _resolve_recipe_path(args.recipe)
    add_user_import_paths(path)  # before the recipe is checked: it imports 'pkg.mod:fn' names
    try:
        if getattr(args, "trl_config", None):  # TRL's fields first; key=value overrides still win
            from posttrain.recipes.loader import trl_config_overrides

            args.overrides = trl_config_overrides(args.trl_config) + list(args.overrides)
        recipe = load_recipe(path, args.overrides)
    except RecipeError as exc:
        raise UserError(str(exc)) from None
    if args.command == "launch":
        from posttrain.launch import launch

        return launch(path, args.overrides, recipe=recipe, nproc=args.nproc, master_port=args.master_port,
                      hostfile=args.hostfile, master_addr=args.master_addr, resume=args.resume, dry_run=args.dry_run)
    if args.command == "validate":
        from posttrain.pipelines.checks import check_run

        check_run(recipe, standalone=True)  # the same pre-flight checks `run` makes before it touches output.dir
        print(f"{path}: OK ({recipe.algorithm}, model {recipe.model.name}, {len(recipe.rewards)} reward(s))")
        return 0
    from posttrain.console import use_compact_progress, verbose
    from posttrain.distributed import register_shm_cleanup
    from posttrain.run import run_recipe

    use_compact_progress(not verbose())
    register_shm_cleanup()
    run_recipe(recipe, recipe_path=path, overrides=args.overrides, resume=args.resume)
    return 0


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name}: must be >= 1 (got {value})")


def _eval_or_generate(args) -> int:
    """``eval`` / ``generate``. With ``--json`` whatever the work prints (e.g. a dataset builder's progress line) goes
    to stderr, so stdout is exactly one JSON document."""
    import contextlib

    for name in ("n", "max_new_tokens", "batch_size", "threads", "samples", "from_eval"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name, None))
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with quiet:
        text = _eval_or_generate_text(args)
    print(text)
    return 0


def _eval_or_generate_text(args) -> str:
    from posttrain import inference

    if args.command == "eval":
        target = inference.resolve_target(args.target, args.recipe, args.overrides)
        res = inference.run_eval(target, data=args.data, n=args.n, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, threads=args.threads, pairs=args.pairs)
        if args.out:
            from posttrain.reporting import write_json

            try:
                write_json(args.out, res)
            except OSError as exc:
                raise UserError(f"--out {args.out}: {exc.strerror}") from None
        return inference.to_json(res) if args.json else inference.format_eval(res)
    target = inference.resolve_target(args.target, args.recipe)
    given = sum(bool(x) for x in (args.prompts, args.file, args.from_eval))
    if given > 1:
        raise UserError("generate: give prompts on the command line, --file or --from-eval, not several")
    if args.prompts or args.file:
        texts = list(args.prompts) if args.prompts else inference.read_prompt_file(args.file)
        if args.file and not args.file.endswith(".txt"):
            prompts = texts  # a dataset file: prompts as stored (messages / pre-fills)
        else:
            system = args.system
            if system is None and target.recipe is not None:
                train = target.recipe.data.train
                train = train.mixture[0] if hasattr(train, "mixture") else train  # a mixture: its first domain
                system = train.args.get("system")
            prompts = inference._text_prompts(texts, system=system, prefill=args.prefill, plain=args.plain)
    else:
        recipe = target.recipe
        if recipe is None or recipe.data.eval is None:
            raise UserError("generate: no prompts given (and no recipe with data.eval to take them from); pass "
                            "PROMPT ..., --file FILE or --recipe RECIPE")
        from posttrain.pipelines.checks import build_eval_dataset

        ds = build_eval_dataset(recipe.data.eval)
        prompts = list(ds["prompt"])[: args.from_eval or 5]
    rows = inference.generate_replies(target, prompts, samples=args.samples, greedy=args.greedy,
                                      temperature=args.temperature, top_p=args.top_p,
                                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                      threads=args.threads, seed=args.seed,
                                      em_inf=inference.em_inf_settings(args.em_inf, target.recipe))
    return inference.to_json(rows) if args.json else inference.format_generations(rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
