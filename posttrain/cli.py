"""``posttrain`` command line: run | launch | validate | recipes.  Thin: parsing and error reporting only.

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
    la = sub.add_parser("launch", help="run a recipe on N processes with the DeepSpeed launcher: "
                        "posttrain launch --nproc N RECIPE [key.path=value ...]")
    la.add_argument("--nproc", type=int, required=True, help="processes per node (the launcher's --num_gpus)")
    la.add_argument("--hostfile", default=None, help="DeepSpeed hostfile ('host slots=N' per line) for many nodes")
    la.add_argument("--master_addr", "--master-addr", default=None, help="address of rank 0 (many nodes)")
    la.add_argument("--master_port", "--master-port", type=int, default=None,
                    help="rendezvous port (default: a free port on this machine)")
    la.add_argument("--dry-run", "--dry_run", action="store_true", help="print the launcher command, do not run it")
    la.add_argument("--resume", action="store_true", help="passed to `posttrain run`")
    la.add_argument("recipe")
    la.add_argument("overrides", nargs="*")
    v = sub.add_parser("validate", help="check a recipe (and overrides) without running it")
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*")
    sub.add_parser("recipes", help="list the shipped recipes")
    return p


def _resolve_recipe_path(arg: str) -> str:
    from posttrain.recipes.loader import RECIPES_DIR

    if os.path.exists(arg) or arg.endswith((".yaml", ".yml")) or os.sep in arg:
        return arg
    shipped = RECIPES_DIR / f"{arg}.yaml"
    return str(shipped) if shipped.exists() else arg


def main(argv: Optional[List[str]] = None) -> int:
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
    path = _resolve_recipe_path(args.recipe)
    try:
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
    from posttrain.distributed import register_shm_cleanup
    from posttrain.run import run_recipe

    register_shm_cleanup()
    run_recipe(recipe, recipe_path=path, overrides=args.overrides, resume=args.resume)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
