"""Run a W&B sweep file without a W&B server: wandb's own sweep engine proposes the runs, this launches them.

    python -m engine.sweep_local sweep.yaml                      # all 12 runs of the grid, one after another
    python -m engine.sweep_local sweep.yaml --dry-run            # print the commands only
    python -m engine.sweep_local sweep.yaml -- --preset demo --epochs 2   # extra train.py flags for every run
    python -m engine.sweep_local sweep.yaml --index 5            # only cell 5 of the grid (a SLURM array task)

The grid comes from `sweeps.next_run` (the engine the W&B server uses, installed by `wandb[sweeps]`), and
each command from the file's `command:` list with wandb agent's macros (`${env}`, `${interpreter}`,
`${program}`, `${args}`, ...) filled exactly as `wandb agent` fills them. Runs log to W&B offline unless
you are logged in. A rerun continues the grid: train.py resumes a run dir that holds a checkpoint and
returns at once for a finished one. A failed run does not stop the others: each is listed at the end with its
own exit code, and the exit status is then `utils.fileio.EXIT_PARTIAL_FAILURE` (3).

The cells of a grid, in the order `sweeps.next_run` proposes them (and the W&B server, which runs the same
engine): the parameters sorted by name, then their cartesian product with the last name varying fastest,
each parameter's values in the file's order. `--index i` (0-based) is the i-th cell of that order, printed as
`[i/N]` there and in the full sweep (whose lines run from [0/N] to [N-1/N]). sweep.yaml (seed before variant):
cell i = variant "ABCD"[i % 4] with seed (42, 123, 456)[i // 4], so cell 0 is A/42, cell 5 B/123, cell 11 D/456.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

with warnings.catch_warnings():  # sweeps 0.2.0 uses pydantic v1 config names: one UserWarning per model
    warnings.simplefilter("ignore", UserWarning)
    import sweeps

from utils.fileio import EXIT_PARTIAL_FAILURE, UserError, read_yaml, run_main
from utils.cli import ArgumentParser


def load_sweep(path: str | Path) -> dict:
    """The sweep file as a dict, validated by wandb's schema (UserError listing the violations)."""
    path = Path(path)
    config = read_yaml(path, "sweep file")
    if not isinstance(config, dict):
        raise UserError(f"{path}: a sweep file is a YAML mapping with method, parameters, program, ...")
    violations = sweeps.schema_violations_from_proposed_config(config)
    if violations:
        raise UserError(f"{path}: not a valid W&B sweep: {'; '.join(violations)}")
    return config


def check_parameters(config: dict, path: str | Path) -> None:
    """Refuse, naming the key, a parameter that is not a train.py flag or a value train.py's parser refuses.

    wandb passes each parameter as `--<key>=<value>` (`${args}`), so the key must be a flag's spelling
    (`lambda-boundary`), and a list under `value:` (a typo for `values:`) becomes one value like `[1, 2]`.
    """
    from engine.config import build_parser  # torch-free
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    parser = build_parser()
    parser.exit_on_error = False  # an ArgumentError to report, not argparse's exit
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for key, spec in config.get("parameters", {}).items():
        if f"--{key}" not in flags:
            raise UserError(f"{path}: parameter {key!r} is not a train.py flag (--{key}); see python train.py "
                            "--help (a flag's name, with hyphens: lambda-boundary)")
        values = spec["values"] if "values" in spec else [spec["value"]] if "value" in spec else \
            [spec[k] for k in ("min", "max") if k in spec]
        for value in values:
            arg = create_sweep_command_args({"args": {key: {"value": value}}})["args"]
            try:
                _, unknown = parser.parse_known_args(arg)
            except argparse.ArgumentError as e:
                unknown = [str(e)]
            if unknown:
                hint = "; a list to sweep over goes under `values:`, not `value:`" if isinstance(value, list) else ""
                raise UserError(f"{path}: parameter {key!r}: train.py refuses {' '.join(arg)} "
                                f"({'; '.join(unknown)}){hint}")


def check_cells(runs: list[tuple[int, dict]], extra: list[str], path: str | Path) -> None:
    """Refuse, before the first run starts, a cell whose flags train.py would refuse (`seed: -5`,
    `lambda-boundary: .nan`, `--loss` with `--variant`): each cell's flags (`runs`: (index, run config)) plus the
    `extra` ones through train.py's own parser and checks (engine.config: each flag's range, then `validate`),
    one line naming the cell. Otherwise every run would start, fail, and the sweep end with all of them failed."""
    from engine.config import build_parser, config_from_flags  # torch-free
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    parser = build_parser()
    parser.exit_on_error = False  # an ArgumentError to report, not argparse's exit
    for i, run in runs:
        args = create_sweep_command_args({"args": run})["args"] + extra
        try:
            given, unknown = parser.parse_known_args(args)
            if unknown:
                raise UserError(f"unrecognized arguments: {' '.join(unknown)}")
            config_from_flags({k: v for k, v in vars(given).items() if k != "print_config"})
        except (argparse.ArgumentError, UserError) as e:
            raise UserError(f"{path}: train.py refuses cell {i} ({shlex.join(args)}): {e}; fix the sweep file's "
                            "values (or the flags after --)") from None


def grid_runs(config: dict, count: int | None = None) -> list[dict]:
    """The runs the sweep engine proposes, in its order, as {parameter: {"value": v}} dicts: the whole grid
    (at most `count` runs), or `count` runs of a random or bayes search (which never end by themselves)."""
    runs: list = []
    with warnings.catch_warnings():
        if config.get("method") == "bayes":
            # The engine fits a Gaussian process to runs without a metric yet (all are proposed before any runs),
            # and sklearn warns that its length scale hit a bound, once per proposal: nothing a user can act on.
            from sklearn.exceptions import ConvergenceWarning
            warnings.simplefilter("ignore", ConvergenceWarning)
        while count is None or len(runs) < count:
            run = sweeps.next_run(config, runs)
            if run is None:
                break
            run.state = sweeps.RunState.finished  # as if done: the engine then proposes the next point
            runs.append(run)
    return [run.config for run in runs]


def run_command(config: dict, run_config: dict) -> list[str]:
    """argv of one run: the sweep's `command` with wandb agent's macro substitution (wandb_agent.py)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": run_config})
    macros.update(interpreter=[sys.executable], program=[config.get("program", "train.py")])
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    argv = []
    for part in create_sweep_command(config.get("command")):
        part = str(part)
        if part.startswith("${") and part.endswith("}"):
            argv += macros.get(part[2:-1]) or []
        else:
            argv.append(part)
    return argv


def resolve_accelerate(argv: list[str]) -> list[str]:
    """`accelerate` from the running interpreter's environment: the script beside sys.executable, else
    `python -m accelerate.commands.launch` (`${env} accelerate` would need the venv's bin on PATH)."""
    if "accelerate" not in argv:
        return argv
    i = argv.index("accelerate")
    beside = Path(sys.executable).parent / "accelerate"
    if beside.is_file():
        return [*argv[:i], str(beside), *argv[i + 1:]]
    if argv[i + 1: i + 2] == ["launch"]:
        return [*argv[:i], sys.executable, "-m", "accelerate.commands.launch", *argv[i + 2:]]
    return [*argv[:i], sys.executable, "-m", "accelerate.commands.accelerate_cli", *argv[i + 1:]]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            usage="python -m engine.sweep_local SWEEP_FILE [--dry-run] [--count N | --index I] "
                                  "[-- TRAIN_FLAGS ...]",
                            epilog="Flags after -- go to every run's train.py, e.g. `-- --preset demo --epochs 2`. "
                                   "Each run's line is [i/N]: cell i (0-based, the --index of that run) of N.")
    parser.add_argument("sweep", help="sweep file, e.g. sweep.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--count", type=int, default=None,
                       help="launch at most N runs (required for method random or bayes)")
    which.add_argument("--index", type=int, default=None,
                       help="launch only cell I (0-based) of a grid, in the order above (one SLURM array task)")
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # flags after -- go to every train.py
    args = parser.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])
    if args.count is not None and args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")

    config = load_sweep(args.sweep)
    if args.index is not None and config["method"] != "grid":
        raise UserError(f"{args.sweep}: --index picks a cell of a grid, and method {config['method']} has no fixed "
                        "cells; pass --count N instead")
    if config["method"] != "grid" and args.count is None:
        raise UserError(f"{args.sweep}: method {config['method']} proposes runs without end; pass --count N")
    check_parameters(config, args.sweep)
    runs = grid_runs(config, args.count)
    commands = [resolve_accelerate(run_command(config, run)) + extra for run in runs]
    numbered = list(enumerate(commands))  # [i/N]: i is the cell's --index
    if args.index is not None:
        if not 0 <= args.index < len(commands):
            raise UserError(f"{args.sweep}: --index {args.index} is out of range: the grid has {len(commands)} "
                            f"cells; pass an index from 0 to {len(commands) - 1}")
        numbered = [numbered[args.index]]
    check_cells([(i, runs[i]) for i, _ in numbered], extra, args.sweep)
    failed = []
    for i, command in numbered:
        print(f"[{i}/{len(commands)}] {shlex.join(command)}", flush=True)
        if args.dry_run:
            continue
        result = subprocess.run(command, env=os.environ.copy())
        if result.returncode != 0:
            failed.append((command, result.returncode))
    for command, code in failed:
        print(f"failed (exit {code}): {shlex.join(command)}", file=sys.stderr)
    return EXIT_PARTIAL_FAILURE if failed else 0


if __name__ == "__main__":
    run_main(main)
