"""`accelerate launch` with the toolkit's exits: a bad flag or file is one line and exit code 2 on several processes
too.

    python -m engine.launch --num_processes 8 train.py --variant C --seed 42     # = accelerate launch ..., same flags
    ACCELERATE_USE_CPU=1 python -m engine.launch --multi_gpu --num_processes 2 train.py --preset demo

accelerate's launcher turns any failed process into its own exit code 1, with a traceback (one process:
subprocess.CalledProcessError) or a ~25-line failure table and torchrun's log lines (several: ChildFailedError).
Here the first failed process's exit code comes through as it is (`utils.run_main`'s: 2 for bad input, 130 for
Ctrl-C, 3 for a partial failure) and nothing is added to the one `error:` line the process printed (once per
machine: utils.fileio.print_error); a crash (any other code) still gets accelerate's table. Without an accelerate
config file, the launch settings accelerate warns about ("values were not passed") get the toolkit's values: the
scripts choose precision and compilation themselves (--mixed-precision, --compile).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import torch
from accelerate.commands.config.config_args import default_config_file
from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from utils.fileio import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_PARTIAL_FAILURE

# What `accelerate launch` would take without a config file (and --num_processes: one per GPU), passed so that
# it does not warn.
LAUNCH_DEFAULTS = {"num_machines": 1, "mixed_precision": "no", "dynamo_backend": "no"}
PASSED_THROUGH = {EXIT_BAD_INPUT, EXIT_PARTIAL_FAILURE, EXIT_INTERRUPTED}  # the scripts' own ends: no table


def main(argv: list[str] | None = None) -> int:
    args = launch_command_parser().parse_args(argv)
    if args.config_file is None and not os.path.isfile(default_config_file):
        for name, value in LAUNCH_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        if args.num_processes is None:  # accelerate's choice: one process per GPU (DDP from 2 on)
            args.num_processes = 1 if args.cpu else max(torch.cuda.device_count(), 1)
            args.multi_gpu = args.multi_gpu or args.num_processes > 1
    # torchrun's "Sending process N closing signal" / "failed (exitcode: 2)" lines: the failure table says it
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as e:  # one process (accelerate's simple launcher)
        if e.returncode not in PASSED_THROUGH:
            print(f"error: {' '.join(map(str, e.cmd))} exited with {e.returncode}", file=sys.stderr)
        return e.returncode if e.returncode > 0 else 1
    except ChildFailedError as e:  # several processes (torchrun)
        _, failure = e.get_first_failure()
        if failure.exitcode not in PASSED_THROUGH:
            print(e, file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
