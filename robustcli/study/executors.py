"""Where the pending steps of a plan run: this process, local worker processes, or Ray.

- ``local`` with ``jobs=1``: one step after the other in this process.
- ``local`` with ``jobs=N``: a ``concurrent.futures.ProcessPoolExecutor`` of N spawned
  processes, each with ``cores // N`` torch threads; a step is submitted once the steps it
  depends on have finished, so independent runs train side by side.
- Both local executors pick the next step with ``next_ready``: a later stage (eval-c, attack)
  whose run is trained before the next training, so a stopped study holds whole runs.
- ``ray``: one Ray task per step, with the step's ``num_cpus``/``num_gpus`` from the study's
  ``resources``; a step's dependencies are passed as object refs, so Ray itself orders them.
  The tasks write results and stamps under the study folder, which must therefore be on a
  filesystem every node sees.

Every executor stops submitting at the first failed step, lets the running ones finish (their
results are kept and stamped) and raises that step's error; rerunning the study resumes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from robustcli.errors import RobustError
from robustcli.study.plan import Plan, Step
from robustcli.study.steps import execute_step, set_threads

EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray needs Ray, which is not installed: pip install 'robustcli[ray]'"


@dataclass
class Hooks:
    """What the executor reports: a step started, finished (with its stamp) or failed."""

    start: Callable[[Step], None] = lambda s: None
    done: Callable[[Step, dict[str, Any]], None] = lambda s, stamp: None
    failed: Callable[[Step, BaseException], None] = lambda s, exc: None
    finished: list[str] = field(default_factory=list)


def default_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _step_error(step: Step, exc: BaseException) -> RobustError:
    if isinstance(exc, RobustError):
        return RobustError(f"step {step.key} failed: {exc}")
    text = " ".join(str(exc).split()) or type(exc).__name__
    return RobustError(f"step {step.key} failed ({type(exc).__name__}: {text[:300]})")


def next_ready(waiting: Sequence[Step], done: set[str], limit: int) -> list[Step]:
    """Up to ``limit`` of the ``waiting`` steps whose dependencies are ``done``: later stages
    first (the eval-c of a trained run before the next run's training), then in plan order. So
    a study that is stopped (a deadline, Ctrl-C) holds whole runs, not only trained models."""
    ready = [s for s in waiting if all(d in done for d in s.deps)]
    ready.sort(key=lambda s: -len(s.deps))  # stable: plan order within a stage
    return ready[: max(0, limit)]


def run_local(
    plan: Plan, *, jobs: int = 1, threads: int | None = None, hooks: Hooks | None = None
) -> None:
    hooks = hooks or Hooks()
    study = plan.study["name"]
    done = {s.key for s in plan.steps if s.status == "done"}
    waiting = list(plan.pending)
    if jobs <= 1:
        if threads is not None:
            set_threads(threads)
        while nxt := next_ready(waiting, done, 1):
            s = nxt[0]
            waiting.remove(s)
            hooks.start(s)
            try:
                stamp = execute_step(s, plan.out, study=study)
            except Exception as exc:
                hooks.failed(s, exc)
                raise _step_error(s, exc) from exc
            done.add(s.key)
            hooks.done(s, stamp)
        return
    import multiprocessing

    threads = threads or default_threads(jobs)
    running: dict[Future[dict[str, Any]], Step] = {}
    error: RobustError | None = None
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=set_threads, initargs=(threads,)
    ) as pool:
        while waiting or running:
            if error is None:  # no more than `jobs` submitted: the next pick sees new results
                for s in next_ready(waiting, done, jobs - len(running)):
                    waiting.remove(s)
                    hooks.start(s)
                    running[pool.submit(execute_step, s, str(plan.out), study=study)] = s
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                s = running.pop(fut)
                try:
                    stamp = fut.result()
                except Exception as exc:
                    hooks.failed(s, exc)
                    error = error or _step_error(s, exc)
                    continue
                done.add(s.key)
                hooks.done(s, stamp)
    if error is not None:
        raise error


def _ray_step(step: dict[str, Any], out: str, study: str, threads: int, *deps: Any) -> Any:
    # ``deps``: the stamps of the steps this one needs; Ray starts the task once they exist
    return execute_step(step, out, study=study, threads=threads)


def run_ray(plan: Plan, *, address: str | None = None, hooks: Hooks | None = None) -> None:
    try:
        import ray
    except ImportError:
        raise RobustError(RAY_MISSING) from None
    hooks = hooks or Hooks()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        except ConnectionError as exc:
            raise RobustError(
                f"cannot reach the Ray cluster at {address}: {exc}; start one with "
                "`ray start --head` or check --address"
            ) from None
    remote = ray.remote(_ray_step)
    out = str(plan.out.resolve())  # tasks on other nodes see the same absolute path
    refs: dict[str, Any] = {}
    pending: dict[Any, Step] = {}
    for s in plan.pending:
        cpus = float(s.resources.get("cpus", 1))
        gpus = float(s.resources.get("gpus", 0))
        dep_refs = [refs[d] for d in s.deps if d in refs]
        ref = remote.options(
            num_cpus=cpus, num_gpus=gpus, max_retries=0, name=f"robust-study:{s.key}"
        ).remote(s.to_dict(), out, plan.study["name"], max(1, int(cpus)), *dep_refs)
        refs[s.key] = ref
        pending[ref] = s
    started: set[str] = set()
    done = {s.key for s in plan.steps if s.status == "done"}
    failed: set[str] = set()
    error: RobustError | None = None
    try:
        while pending:
            for s in pending.values():
                if s.key not in started and all(d in done for d in s.deps):
                    started.add(s.key)
                    hooks.start(s)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                s = pending.pop(ref)
                try:
                    stamp = ray.get(ref)
                except Exception as exc:
                    failed.add(s.key)
                    if any(d in failed for d in s.deps):
                        continue  # failed because a step it needs failed: said already
                    cause = getattr(exc, "cause", None) or exc
                    hooks.failed(s, cause)
                    error = error or _step_error(s, cause)
                    continue
                done.add(s.key)
                hooks.done(s, stamp)
    except KeyboardInterrupt:
        for other in pending:
            ray.cancel(other, force=True)
        raise
    # the tasks already submitted that did not need the failed step have finished (stamped)
    if error is not None:
        raise error


def run_plan(
    plan: Plan,
    *,
    executor: str = "local",
    jobs: int = 1,
    threads: int | None = None,
    address: str | None = None,
    hooks: Hooks | None = None,
) -> None:
    if executor == "ray":
        run_ray(plan, address=address, hooks=hooks)
    elif executor == "local":
        run_local(plan, jobs=jobs, threads=threads, hooks=hooks)
    else:
        raise RobustError(f"unknown --executor {executor!r}: choose one of {', '.join(EXECUTORS)}")


def check_executor(executor: str, names: Sequence[str] = EXECUTORS) -> str:
    if executor not in names:
        raise RobustError(f"unknown --executor {executor!r}: choose one of {', '.join(names)}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise RobustError(RAY_MISSING) from None
    return executor
