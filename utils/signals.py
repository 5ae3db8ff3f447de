"""Stopping on the signals that reach a whole process group: SIGINT from Ctrl-C in a terminal, SIGTERM from
`timeout`, SLURM (preemption, requeue, time limit) and `docker stop`. Every process of the job gets it at once:
the entry script and its worker processes (DataLoader workers, pools) alike.

The rule: the entry script stops as on Ctrl-C (`sigterm_as_ctrl_c`: KeyboardInterrupt, one line, exit code 130
through `utils.run_main`) and stops its workers itself; each worker leaves the stop to its parent or ends
quietly, so none prints a traceback and none dies of the signal under its parent (torch's "DataLoader worker
... killed by signal: Terminated", a pool broken mid-task):

- DataLoader workers (`worker_init_fn=loader_worker_init`) end quietly on both, as torch's worker loop ends on
  Ctrl-C; the parent's loader sees a worker that exited cleanly, not one killed by a signal.
- spawned pool workers (evaluate.py --all --jobs N) ignore both too; they start with both blocked
  (`stop_signals_deferred` around their start), so a signal that comes while one still imports torch waits for
  its initializer (`ignore_stop_signals`) instead of ending the import with a traceback.
- multiprocessing.Pool workers (`stoppable_pool`) ignore both too; the parent stops them by skipping the tasks
  they have not started, not by killing them (see there why).

docs/faults.md lists the cases and their tests (tests/test_signals.py).
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
from contextlib import contextmanager
from functools import partial

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def sigterm_as_ctrl_c():
    """Within: SIGTERM, which SLURM sends a job it preempts, requeues or stops at its time limit, stops the
    process as Ctrl-C does (train.py: the W&B run closed as failed, exit code 130; the same command resumes),
    after marking the W&B run, if one is active, as preempting: a W&B sweep requeues a preempting run that
    exits non-zero, and the next `wandb agent` continues it with the same id and config, hence the same run dir
    (https://docs.wandb.ai/models/sweeps/signal-handling-sweep-runs). The previous handler is back on exit.
    A process forked within inherits the handler but ends on SIGTERM as it would without it (a pool's
    terminate() stops its workers with SIGTERM), unless it set its own (`ignore_stop_signals`)."""
    owner = os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:  # a forked worker: SIGTERM's default action, death, with no traceback
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        run = getattr(sys.modules.get("wandb"), "run", None)  # no import: a run without W&B has none
        if run is not None:
            run.mark_preempting()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def loader_worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: SIGTERM ends this worker as Ctrl-C does: a KeyboardInterrupt, which torch's
    worker loop catches, exiting with code 0, while a worker killed by SIGTERM makes the main process raise
    "DataLoader worker ... killed by signal: Terminated". Not ignored: multiprocessing's exit handler stops a
    worker left running (a loader not shut down) with SIGTERM."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def ignore_stop_signals() -> None:
    """Pool worker initializer: ignore SIGINT and SIGTERM, which reach the parent too, and drop one held back by
    `stop_signals_deferred`. The parent stops this worker: `stoppable_pool`, evaluate.py's stop message
    (engine.batch_eval.stop_workers)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stoppable_pool(context, processes: int, initializer=None, initargs=()):
    """Within: `imap_unordered(fn, tasks, chunksize=1)`, multiprocessing.Pool's, over `processes` workers from
    `context` (`multiprocessing.get_context(method)`) that ignore SIGINT and SIGTERM; `initializer(*initargs)`
    runs in each worker, as Pool's does. On leaving the block (done, an error or a stop) the tasks not yet
    started are skipped, the running ones finish, and the workers exit. None is killed: a worker killed while it
    reads its next task leaves the pool's task queue locked or half read, and `Pool.terminate()` then hangs
    or fails."""
    stopping = context.RawValue("b", 0)  # shared memory: 1 once the block is left, so the workers skip the rest

    def stop():
        stopping.value = 1
        pool.close()
        pool.join()

    pool = None
    try:
        with stop_signals_deferred():  # no KeyboardInterrupt halfway through Pool(), which would leak its workers
            pool = context.Pool(processes, initializer=_init_pool_worker, initargs=(stopping, initializer, initargs))
            # A stop that lands after this generator yields but before the caller's `with` holds it (inside
            # contextlib's __enter__) leaves the block unclosed; then the pool stops at exit, before
            # multiprocessing's own exit handler would wait for workers that ignore its SIGTERM.
            atexit.register(stop)
        yield lambda fn, tasks, chunksize=1: pool.imap_unordered(partial(_unless_stopping, fn), tasks, chunksize)
    finally:
        if pool is not None:
            atexit.unregister(stop)
            stop()


_STOPPING = None  # in a stoppable_pool worker: the pool's shared stop flag


def _init_pool_worker(stopping, initializer, initargs) -> None:
    global _STOPPING
    _STOPPING = stopping
    ignore_stop_signals()
    if initializer is not None:
        initializer(*initargs)


def _unless_stopping(fn, task):
    return None if _STOPPING.value else fn(task)


@contextmanager
def stop_signals_deferred():
    """Within: SIGINT and SIGTERM are noted, not acted on, and blocked in this thread, hence held back in the
    processes and threads it starts (they inherit the mask; `ignore_stop_signals` unblocks them in a worker).
    On exit the previous handlers act on those noted (Ctrl-C: KeyboardInterrupt, raised there). Blocking alone
    is not enough: a signal another thread takes still runs its Python handler in this one."""
    noted = []
    previous = {signum: signal.signal(signum, lambda signum, frame: noted.append(signum)) for signum in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)
