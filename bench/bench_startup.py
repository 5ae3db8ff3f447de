"""How fast the entry scripts answer --help, as a ratio to a bare `import torch`, measured in one run.

Each command runs in a fresh interpreter, --repeats times, interleaved (torch, train.py --help, torch, ...), so
machine load affects all alike; the figure is the median wall time. The bound this repo keeps (issue 12):
`python train.py --help` <= 0.25 x `python -c "import torch"`.

    python bench/bench_startup.py --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import torch": ["-c", "import torch"],
    "train.py --help": ["train.py", "--help"],
    "evaluate.py --help": ["evaluate.py", "--help"],
    "precompute_sdt.py --help": ["precompute_sdt.py", "--help"],
    "aggregate.py --help": ["aggregate.py", "--help"],
    "train.py --seed -1": ["train.py", "--seed", "-1"],  # a rejected flag: answered as fast as --help
}
BOUND = 0.25


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True)
            seconds[name].append(time.perf_counter() - start)
    torch_s = statistics.median(seconds["import torch"])
    print(f"{'command':<28} {'median s':>9} {'x import torch':>15}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:9.3f} {median / torch_s:15.3f}")
    ratio = statistics.median(seconds["train.py --help"]) / torch_s
    verdict = "holds" if ratio <= BOUND else "FAILS"
    print(f"train.py --help / import torch = {ratio:.3f} (bound {BOUND}: {verdict})")
    return 0 if ratio <= BOUND else 1


if __name__ == "__main__":
    sys.exit(main())
