"""Stopping on the signals that reach a whole process group: SIGINT from Ctrl-C in a terminal, SIGTERM from
`timeout`, SLURM (preemption, requeue, time limit) and `docker stop`. Every process of the job gets it at once:
the entry script and its worker processes (DataLoader workers, pools) alike.

The rule: the entry script stops as on Ctrl-C (`sigterm_as_ctrl_c`: KeyboardInterrupt, one line, exit code 130
through `utils.run_main`) and stops its workers itself; each worker leaves the stop to its parent, so no worker
prints a traceback and no worker dies under its parent (torch's "DataLoader worker ... killed by signal:
Terminated", a pool broken mid-task):

- DataLoader workers (`worker_init_fn=ignore_stop_signals`) ignore both: the parent shuts its loaders down.
- spawned pool workers (evaluate.py --all --jobs N) ignore both too; they start with both blocked
  (`stop_signals_blocked` around their start), so a signal that comes while one still imports torch waits for
  its initializer (`ignore_stop_signals`) instead of ending the import with a traceback.
- forked multiprocessing.Pool workers (`initializer=init_pool_worker`) ignore SIGINT, and exit on SIGTERM as
  `Pool.terminate()` needs, but by SystemExit: a worker killed outright while it waits for a task dies holding
  the pool's task-queue lock, and the parent's terminate() then waits for that lock forever.

docs/faults.md lists the cases and their tests (tests/test_signals.py).
"""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

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


def ignore_stop_signals(*_worker_id) -> None:
    """Worker initializer (a DataLoader's `worker_init_fn`, which passes the worker id; a spawned pool's
    `initializer`): ignore SIGINT and SIGTERM, which reach the parent too, and drop one held back by
    `stop_signals_blocked`. The parent stops this worker: a loader's shutdown, a pool's own stop message or
    SIGKILL."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def init_pool_worker() -> None:
    """Forked multiprocessing.Pool initializer: ignore SIGINT (the parent stops the pool); on SIGTERM (a group's,
    or `Pool.terminate()`'s) exit quietly through SystemExit, so the pool's locks and the task's temp files are
    released on the way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(128 + signum)  # the shell's code for a death by that signal; multiprocessing prints nothing for it


@contextmanager
def stop_signals_blocked():
    """Within: SIGINT and SIGTERM are blocked in this thread, hence held back (not lost) in the processes it
    starts, which inherit the mask until they unblock them (`ignore_stop_signals`). The parent still gets them
    (another thread takes the signal, or this one on exit)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
