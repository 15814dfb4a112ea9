"""Run the planned arm × seed runs: reuse finished ones, resume interrupted ones, N at a time, with a progress bar.

Each run is ``python -m posttrain run RECIPE <overrides> seed=S model.threads=T output.dir=<runs_dir>/<arm>-s<S>
output.overwrite=true`` in its own process with ``OMP_NUM_THREADS=T`` (and MKL / OpenBLAS likewise). Its stdout and
stderr go to ``<runs_dir>/logs/<arm>-s<S>.out|.err``; when it ends, ``<run>/compare_run.json`` records the reuse key,
the status, the exit code, the last stderr line of a failure, the wall time and the peak resident memory of the
process (``ru_maxrss`` from ``wait4``). A failed run does not stop the others.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Dict, List, Optional

import yaml

from posttrain.compare.spec import Plan, PlannedRun, recipe_key

PKG_ROOT = str(Path(__file__).resolve().parents[2])
STATUS_FILE = "compare_run.json"


# ----------------------------------------------------------------------------------------------------- state
def resolved_key(out: Path) -> Optional[str]:
    p = out / "recipe.resolved.yaml"
    if not p.is_file():
        return None
    try:
        return recipe_key(yaml.safe_load(p.read_text()) or {})
    except yaml.YAMLError:
        return None


def finished(out: Path) -> bool:
    """summary.json of a run that trained to the end and was evaluated after training."""
    p = out / "summary.json"
    if not p.is_file():
        return False
    try:
        s = json.loads(p.read_text())
    except json.JSONDecodeError:
        return False
    return "stopped" not in s and "after" in (s.get("eval") or {})


def run_state(run: PlannedRun) -> str:
    """'done' (finished, same resolved recipe), 'stale' (finished, another recipe), 'partial' (same recipe, not
    finished, a complete checkpoint to resume from) or 'none'."""
    key = resolved_key(run.out)
    if key is None:
        return "none"
    if finished(run.out):
        return "done" if key == run.key else "stale"
    if key != run.key:
        return "none"
    from posttrain.trainers.checkpointing import latest_complete_checkpoint

    return "partial" if latest_complete_checkpoint(run.out / "trainer") is not None else "none"


def read_status(out: Path) -> Dict:
    p = out / STATUS_FILE
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def last_error_line(text: str) -> str:
    """The line that says why a process failed: the last ``posttrain: error|stopped`` line, else the last line that
    is not a progress bar (a traceback's last line), else ''."""
    parts = [p.strip() for line in text.splitlines() for p in line.split("\r")]
    parts = [p for p in parts if p and not ("%|" in p or p.endswith(("it/s]", "s/it]")))]
    for p in reversed(parts):
        if p.startswith(("posttrain: error", "posttrain: stopped", "posttrain compare:")):
            return p
    return parts[-1] if parts else ""


# ----------------------------------------------------------------------------------------------------- spawn
def child_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    # the child imports the same posttrain as this process, whatever the current directory
    env["PYTHONPATH"] = PKG_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def train_command(run: PlannedRun, resume: bool) -> List[str]:
    return [sys.executable, "-m", "posttrain", "run", str(run.recipe_path), *run.overrides,
            *(["--resume"] if resume else [])]


def pass_at_k_command(plan: Plan, run: PlannedRun) -> List[str]:
    pk = plan.spec.pass_at_k
    return [sys.executable, "-m", "posttrain.compare.items", str(run.out), "--k", str(pk.k), "--samples", str(pk.n),
            "--temperature", str(pk.temperature), "--seed", str(run.seed),
            *(["--max-new-tokens", str(pk.max_new_tokens)] if pk.max_new_tokens else [])]


class _Procs:
    """The child processes this harness started (pid -> Popen), to terminate them on Ctrl-C."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs: Dict[int, subprocess.Popen] = {}
        self.stopping = False

    def terminate_all(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs.values())
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass


def spawn(cmd: List[str], *, env: Dict[str, str], log_stem: Path, procs: _Procs) -> Dict:
    """Run ``cmd`` to its end; ``{"returncode", "seconds", "peak_rss_mb", "error"}`` (error: last stderr line of
    a failure)."""
    log_stem.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    t0 = time.time()
    with open(out_path, "ab") as fo, open(err_path, "wb") as fe:
        fo.write(("+ " + " ".join(cmd) + "\n").encode())
        fo.flush()
        with procs.lock:
            if procs.stopping:
                return {"returncode": -signal.SIGTERM, "seconds": 0.0, "peak_rss_mb": None, "error": "interrupted"}
            p = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env)
            procs.procs[p.pid] = p
        try:
            _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage (peak RSS), not all children's
            p.returncode = os.waitstatus_to_exitcode(status)
        finally:
            with procs.lock:
                procs.procs.pop(p.pid, None)
    res = {"returncode": p.returncode, "seconds": round(time.time() - t0, 1),
           "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1), "error": None}  # ru_maxrss: KiB on Linux
    if p.returncode != 0:
        tail = err_path.read_bytes()[-65536:].decode("utf-8", "replace")
        res["error"] = last_error_line(tail) or f"exit code {p.returncode}"
    return res


# -------------------------------------------------------------------------------------------------- one run
def _needs_pass_at_k(plan: Plan, run: PlannedRun) -> bool:
    from posttrain.compare.items import read_pass_at_k

    pk = plan.spec.pass_at_k
    return pk is not None and read_pass_at_k(run.out, pk.k, pk.n, pk.temperature) is None


def execute_run(plan: Plan, run: PlannedRun, procs: _Procs, *,
                train_cmd: Callable[[PlannedRun, bool], List[str]] = train_command,
                passk_cmd: Optional[Callable[[Plan, PlannedRun], List[str]]] = None) -> PlannedRun:
    """Bring one run to 'ok' (trained now), 'reused' (finished before, same recipe) or 'failed'."""
    passk_cmd = passk_cmd or pass_at_k_command
    env = child_env(plan.threads)
    logs = plan.runs_dir / "logs" / run.id
    state = run_state(run)
    prev = read_status(run.out)
    info: Dict = {"key": run.key, "arm": run.arm, "seed": run.seed, "threads": plan.threads}
    model_there = (run.out / "model").is_dir()
    if state == "done" and not (_needs_pass_at_k(plan, run) and not model_there):
        run.status = "reused"
        info.update({k: prev.get(k) for k in ("seconds", "peak_rss_mb", "resumed", "threads")
                     if prev.get("key") == run.key and k in prev})
    else:
        res = None
        if state == "partial":
            res = spawn(train_cmd(run, True), env=env, log_stem=logs, procs=procs)
            info["resumed"] = res["returncode"] == 0
        if res is None or (res["returncode"] != 0 and not procs.stopping):
            # a fresh run (also when a resume failed, e.g. on a corrupt checkpoint)
            res = spawn(train_cmd(run, False), env=env, log_stem=logs, procs=procs)
        info.update(returncode=res["returncode"], seconds=res["seconds"], peak_rss_mb=res["peak_rss_mb"])
        if res["returncode"] != 0:
            run.status, info["error"] = "failed", res["error"]
        elif not finished(run.out):
            run.status, info["error"] = "failed", "exit code 0 but no summary.json with an evaluation after training"
        else:
            run.status = "ok"
    if run.status != "failed" and _needs_pass_at_k(plan, run):
        res = spawn(passk_cmd(plan, run), env=env, log_stem=logs.with_name(run.id + "_pass_at_k"), procs=procs)
        info["pass_at_k_seconds"] = res["seconds"]
        if res["returncode"] != 0:
            run.status, info["error"] = "failed", f"pass@k: {res['error']}"
    if run.status != "failed" and plan.spec.pass_at_k is not None and not plan.spec.keep_models \
            and (run.out / "model").is_dir() and not _needs_pass_at_k(plan, run):
        import shutil

        shutil.rmtree(run.out / "model")
    info["status"] = run.status
    run.info = info
    run.out.mkdir(parents=True, exist_ok=True)
    if run.status != "reused":
        (run.out / STATUS_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return run


def report_only_status(run: PlannedRun) -> PlannedRun:
    """The state of a run without running anything: 'reused' (finished, same recipe), 'failed' (its last attempt
    with this recipe failed), 'stale' or 'missing'."""
    prev = read_status(run.out)
    state = run_state(run)
    if state == "done":
        run.status = "reused"
        run.info = {k: prev.get(k) for k in ("seconds", "peak_rss_mb", "resumed", "threads") if prev.get("key") == run.key}
    elif prev.get("key") == run.key and prev.get("status") == "failed":
        run.status, run.info = "failed", {"error": prev.get("error")}
    else:
        run.status = "stale" if state == "stale" else "missing"
        run.info = {"error": "finished with a different recipe" if state == "stale" else "not run"}
    return run


def execute(plan: Plan, *, progress: bool = True, train_cmd=train_command, passk_cmd=None) -> List[PlannedRun]:
    """Run every planned run, ``plan.jobs`` at a time; returns the runs with their status and info."""
    from tqdm.auto import tqdm

    procs = _Procs()
    running: Dict[str, float] = {}
    lock = threading.Lock()

    def job(run: PlannedRun) -> PlannedRun:
        with lock:
            running[run.id] = time.time()
        try:
            return execute_run(plan, run, procs, train_cmd=train_cmd, passk_cmd=passk_cmd)
        except Exception as exc:  # noqa: BLE001 - a harness bug in one run must not lose the others
            run.status, run.info = "failed", {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            return run
        finally:
            with lock:
                running.pop(run.id, None)

    counts = {"ok": 0, "reused": 0, "failed": 0}
    bar = tqdm(total=len(plan.runs), desc=f"compare {plan.spec.name}", unit="run", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)

    def postfix():
        with lock:
            now = time.time()
            run_txt = ", ".join(f"{k} {now - t:.0f}s" for k, t in running.items())
        bar.set_postfix_str(f"ok {counts['ok']} reused {counts['reused']} failed {counts['failed']}"
                            + (f" | running: {run_txt}" if run_txt else ""), refresh=True)

    pool = ThreadPoolExecutor(max_workers=plan.jobs)
    try:
        pending = {pool.submit(job, r) for r in plan.runs}
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for f in done:
                r = f.result()
                counts[r.status if r.status in counts else "failed"] += 1
                if r.status == "failed":
                    bar.write(f"[compare] {r.id}: failed: {r.info.get('error')}")
                bar.update(1)
            postfix()
    except KeyboardInterrupt:
        procs.terminate_all()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        raise
    pool.shutdown(wait=True)
    bar.close()
    return plan.runs
