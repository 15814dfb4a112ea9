"""Fault isolation for reward functions: a failing reward marks samples as *missing*, it never kills the run.

A reward function is user code (or a call to an external service) running inside hours of training.
:class:`SafeReward` wraps any TRL-style reward callable and turns every way it can fail into missing values
(``None``, which TRL turns into NaN), recording which samples failed and why:

===================================  ==========================================================================
failure                              what happens
===================================  ==========================================================================
raises an exception                  the call is retried one sample at a time, so one bad completion costs
                                     only its own reward (set ``isolate=False`` to skip the retry)
returns NaN / inf / a non-number     that sample is missing
returns the wrong number of values   every sample of the call is missing
takes longer than ``timeout`` s      every sample of the call is missing; the worker thread is abandoned
                                     (Python cannot kill a thread: it runs on as a daemon and its result is
                                     dropped), so a reward that calls a service should also set its own
                                     client-side timeout
===================================  ==========================================================================

A ``None`` the function returns on purpose is TRL's "not applicable" and is passed through untouched, not
counted as a failure. The trainer (``PosttrainGRPOTrainer``) reads :attr:`SafeReward.last_failed` after each
call: a sample with any failed reward is excluded from the advantages (its reward row becomes NaN, which TRL
1.16 leaves out of the group baseline and gives advantage 0) and counted in ``reward_failures/*`` metrics.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from typing import Any, Callable, List, Optional

logger = logging.getLogger("posttrain.rewards")

_PER_CALL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


class RewardTimeout(Exception):
    pass


def _call_with_timeout(fn: Callable, timeout: Optional[float], kwargs: dict):
    if timeout is None:
        return fn(**kwargs)
    box: dict = {}

    def target():
        try:
            box["value"] = fn(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    # A daemon thread, not a ThreadPoolExecutor: a hung reward must not block interpreter exit.
    worker = threading.Thread(target=target, name="posttrain-reward", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise RewardTimeout(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _clean(value: Any) -> tuple[Optional[float], Optional[str]]:
    """(reward, failure reason): ``None`` passes through; a non-finite or non-numeric value is a failure."""
    if value is None:
        return None, None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None, f"non-numeric value {type(value).__name__}"
    if not math.isfinite(x):
        return None, "non-finite value"
    return x, None


class SafeReward:
    """Wrap a reward callable so that its failures become missing samples (see the module docstring).

    Args:
        fn: a callable with TRL's reward signature ``fn(prompts=, completions=, completion_ids=, **columns)``.
        timeout: seconds per call (``None``: no limit, the call runs in the trainer's thread).
        isolate: after an exception, retry each sample alone to keep the rewards of the others.
    """

    def __init__(self, fn: Callable, *, timeout: Optional[float] = 60.0, isolate: bool = True):
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"reward timeout must be a positive number of seconds or None, got {timeout!r}")
        self.fn = fn
        self.timeout = None if timeout is None else float(timeout)
        self.isolate = isolate
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.last_failed: List[bool] = []
        self.last_reasons: Counter = Counter()
        self.total_failed = 0
        self.total_calls = 0

    def __getattr__(self, name):  # bind_tokenizer, eos_token_ids, ... of the wrapped reward
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs) -> List[Optional[float]]:
        n = len(completions) if completions is not None else 0
        self.total_calls += 1
        call = dict(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        try:
            raw = _call_with_timeout(self.fn, self.timeout, call)
        except RewardTimeout as exc:
            return self._all_failed(n, f"timeout ({exc})")
        except Exception as exc:  # noqa: BLE001 - any error of user code is a missing reward, by design
            if not self.isolate or n <= 1:
                return self._all_failed(n, f"{type(exc).__name__}: {exc}")
            return self._per_sample(n, call, first_error=exc)
        if not isinstance(raw, (list, tuple)) or len(raw) != n:
            got = f"{len(raw)} values" if isinstance(raw, (list, tuple)) else type(raw).__name__
            return self._all_failed(n, f"returned {got} for {n} completions")
        return self._finish([_clean(v) for v in raw])

    # ------------------------------------------------------------------ helpers
    def _per_sample(self, n: int, call: dict, first_error: Exception) -> List[Optional[float]]:
        results = []
        for i in range(n):
            one = {k: (v[i:i + 1] if isinstance(v, (list, tuple)) and len(v) == n and k not in _PER_CALL_KWARGS
                       else v) for k, v in call.items()}
            try:
                raw = _call_with_timeout(self.fn, self.timeout, one)
                if not isinstance(raw, (list, tuple)) or len(raw) != 1:
                    results.append((None, "wrong number of values"))
                else:
                    results.append(_clean(raw[0]))
            except RewardTimeout:
                results.append((None, "timeout"))
            except Exception as exc:  # noqa: BLE001
                results.append((None, f"{type(exc).__name__}: {exc}"))
        if all(reason for _, reason in results):
            logger.warning("reward '%s' failed on all %d samples: %s", self.__name__, n, first_error)
        return self._finish(results)

    def _all_failed(self, n: int, reason: str) -> List[Optional[float]]:
        logger.warning("reward '%s' failed for a whole call of %d samples: %s", self.__name__, n, reason)
        return self._finish([(None, reason)] * n)

    def _finish(self, results) -> List[Optional[float]]:
        self.last_failed = [reason is not None for _, reason in results]
        self.last_reasons = Counter(reason.split(":")[0] for _, reason in results if reason)
        self.total_failed += sum(self.last_failed)
        return [value for value, _ in results]

    def __repr__(self) -> str:
        return f"SafeReward({self.fn!r}, timeout={self.timeout}, isolate={self.isolate})"
