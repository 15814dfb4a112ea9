"""``posttrain compare SPEC.yaml``: paired A/B comparisons of recipes over seeds (docs/compare.md).

    from posttrain.compare import compare
    result = compare("recipes/compare/tiny.yaml", jobs=2)      # runs (or reuses) arm × seed, writes the report

Library: :func:`compare`; command line: :func:`cli_main` (``posttrain compare`` in ``posttrain/cli.py``, or
``python -m posttrain.compare SPEC``). Modules: ``spec`` (schema, plan, checks), ``runner`` (subprocess runs),
``stats`` (pure statistics), ``items`` (per-item scores, pass@k sampling), ``report`` (Markdown / JSON / PNG).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from posttrain.compare.spec import CompareError, Spec, load_spec, make_plan

__all__ = ["compare", "cli_main", "CompareError", "Spec", "load_spec", "make_plan"]


def compare(spec_path: str | Path, *, jobs: Optional[int] = None, report_only: bool = False,
            runs_dir: Optional[str | Path] = None, out_dir: Optional[str | Path] = None,
            progress: bool = True) -> dict:
    """Plan, run (or with ``report_only`` only read) every arm × seed, and write the report.

    Returns the report's JSON object plus ``"paths"`` (markdown / json / png) and ``"failed"`` (ids of runs that
    failed or are missing). Raises :class:`CompareError` (one line) for a bad spec, before anything runs.
    """
    from posttrain.compare import report, runner
    from posttrain.reporting import report_notes_problem

    plan = make_plan(spec_path, jobs=jobs, runs_dir=runs_dir, out_dir=out_dir)
    md = plan.out_dir / f"{plan.report_name}.md"
    if msg := report_notes_problem(md):  # before hours of runs, not after
        raise CompareError(msg)
    if report_only:
        for run in plan.runs:
            runner.report_only_status(run)
    else:
        runner.execute(plan, progress=progress)
    collected = [report.collect_run(plan, r) for r in plan.runs]
    result = report.analyse(plan, collected)
    result["paths"] = report.write_outputs(plan, result)
    result["failed"] = [r["id"] for r in result["runs"] if r["status"] not in report.OK]
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain compare", description="Paired A/B comparison of recipes over "
                                "seeds: runs (or reuses) every arm × seed and writes <name>.md/.json/.png.")
    p.add_argument("spec", help="comparison spec YAML, or the name of a shipped one (recipes/compare/<name>.yaml)")
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel (default: the spec's jobs)")
    p.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    p.add_argument("--runs-dir", default=None, help="override the spec's runs_dir")
    p.add_argument("--out-dir", default=None, help="override the spec's out_dir (where the report goes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def cli_main(argv: Optional[List[str]] = None) -> int:
    """``posttrain compare`` (argv without the word 'compare'). Exit 0: every run finished; 1: some run failed or
    is missing (the report still lists it); 2: bad input (one line on stderr)."""
    args = _parser().parse_args(argv)
    import signal
    import threading

    def _stop(signum, frame):  # SIGTERM like Ctrl-C: terminate the runs this harness started, then exit
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        res = compare(args.spec, jobs=args.jobs, report_only=args.report_only, runs_dir=args.runs_dir,
                      out_dir=args.out_dir, progress=not args.no_progress)
    except CompareError as exc:
        print(f"posttrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posttrain: interrupted", file=sys.stderr)
        return 130
    print(f"wrote {res['paths']['markdown']}")
    for arm, per in res["differences"].items():
        d = per.get(res["primary_metric"])
        if d:
            print(f"{arm} - {res['baseline']} ({res['primary_metric']}): {d['reading']}")
    if res["failed"]:
        print(f"posttrain compare: not finished: {', '.join(res['failed'])}", file=sys.stderr)
        return 1
    return 0
