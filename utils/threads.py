"""CPU threads per process: the cores this process may run on, shared among the jobs that run at once.

One rule for every CPU path (docs/performance.md, "CPU threads"):

    intra-op threads = max(1, usable cores // parallel jobs)

where the usable cores are the process's CPU affinity (`os.sched_getaffinity`: what `taskset`, SLURM's
`--cpus-per-task` or a container's cpuset allow, not the machine's core count) and the jobs are the processes
that share them: `evaluate.py --all --jobs N`, `precompute_sdt.py --jobs N`. DataLoader workers get one thread
each (torch sets it in every worker), as precompute_sdt's workers do.

Importing this module (the `utils` package does, first) also sets OMP_WAIT_POLICY=PASSIVE unless the environment
sets it: OpenMP threads then sleep at the end of a parallel region instead of spinning. Spinning only pays on
cores nobody else wants; on a loaded host, threads that spin while they wait for a descheduled peer make one
1024x2048 metrics call take 20-100x longer (BENCHMARKS.md, "CPU paths under contention"). OpenMP reads the
variable when torch loads it, so the `utils` import must come before `import torch` in an entry point
(tests/test_utils.py checks train.py, evaluate.py and precompute_sdt.py); child processes inherit it.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cpus() -> int:
    """The number of cores this process may run on (its CPU affinity; the core count where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_job(jobs: int = 1) -> int:
    """Intra-op threads for each of `jobs` processes sharing this process's cores: max(1, usable // jobs)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    return max(1, usable_cpus() // jobs)


def set_torch_threads(jobs: int = 1, threads: int = 0) -> int:
    """torch.set_num_threads(threads, or `threads_per_job(jobs)` when threads is 0); returns the count.

    Example:
        >>> n = set_torch_threads(jobs=2)   # one of two jobs on this process's cores
    """
    import torch  # here: importing this module must not load torch (and OpenMP) before the policy is set

    count = threads if threads > 0 else threads_per_job(jobs)
    torch.set_num_threads(count)
    return count
