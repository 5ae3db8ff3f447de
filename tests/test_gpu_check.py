"""bench/gpu_check.sh on the CPU: its syntax, the steps --dry-run lists (each command's entry point and flags
exist, the time limits fit in 7 minutes, the CUDA tests are all the tests that skip without CUDA), each step's
CPU-side cost against its limit (the same commands without CUDA), and that a failing or timed-out step is recorded
with what it printed while the check goes on to write its table and JSON."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEP_LINE = re.compile(r"^\[(\w+)\] timeout (\d+) s \(GPU work (\d+) s\): (.*)$")
SEVEN_MINUTES = 7 * 60


def dry_run(*flags: str, python: str = "python") -> list[tuple[str, int, list[str]]]:
    """(name, time limit, argv) of every step, in order."""
    return [(name, limit, argv) for name, limit, _, argv in dry_run_steps(*flags, python=python)]


def dry_run_steps(*flags: str, python: str = "python") -> list[tuple[str, int, int, list[str]]]:
    """(name, time limit, GPU work allowed, argv) of every step, in order."""
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", *flags], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHON": python}).stdout
    return [(m[1], int(m[2]), int(m[3]), shlex.split(m[4])) for m in map(STEP_LINE.match, out.splitlines()) if m]


def argparse_flags(path: Path) -> set[str]:
    """The option strings of every `add_argument(...)` call in a script's source (no import, no torch)."""
    return {arg.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "add_argument"
            for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")}


def cuda_only_tests() -> set[str]:
    """tests/<file>::<name> of every test function decorated with a skipif on torch.cuda.is_available()."""
    found = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any(
                    "skipif" in ast.unparse(d) and "cuda.is_available" in ast.unparse(d) for d in node.decorator_list):
                found.add(f"tests/{path.name}::{node.name}")
    return found


def test_script_parses_and_rejects_an_unknown_argument():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    bad = subprocess.run(["bash", str(SCRIPT), "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: gpu_check.sh: unknown argument '--nope'")


def test_dry_run_lists_every_figure_within_7_minutes_with_existing_entry_points_and_flags(tmp_path):
    steps = dry_run("--data", str(tmp_path))  # no frames there: the synthetic data step comes first
    assert [name for name, _, _ in steps] == ["data", "train", "train_eager", "sdt", "metrics", "evaluate",
                                              "cuda_tests", "predict"]
    assert sum(limit for _, limit, _ in steps) <= SEVEN_MINUTES  # a cold compile included (the train step)
    for name, _, argv in steps:
        assert argv[0] == "python", name
        if argv[1] == "-m" and argv[2] == "pytest":
            assert {a for a in argv[3:] if "::" in a} == cuda_only_tests()
            continue
        source = ROOT / (argv[2].replace(".", "/") + ".py" if argv[1] == "-m" else argv[1])
        assert source.is_file(), name
        if source.name == "bench_train.py":  # train.py's flags and its own: its parser, no AST
            from bench import bench_train
            bench_train.parse_args(argv[2:])
            continue
        flags = {a.split("=")[0] for a in argv[2:] if a.startswith("--")}
        assert flags <= argparse_flags(source), (name, flags - argparse_flags(source))
        if name != "data":
            assert "--device" not in flags or argv[argv.index("--device") + 1] == "cuda", name
    # With frames given, no data step, and every data-reading step reads them (train: --data-root).
    frames = tmp_path / "frames"
    for folder, suffix in (("gtFine/val", "gtFine_labelIds"), ("leftImg8bit/train", "leftImg8bit")):
        (frames / folder / "city").mkdir(parents=True)
        (frames / folder / "city" / f"a_000000_000000_{suffix}.png").touch()
    steps = dry_run("--data", str(frames))
    assert "data" not in [name for name, _, _ in steps]
    for name, _, argv in steps:
        given = [argv[i + 1] for i, a in enumerate(argv) if a in ("--data", "--data-root")]
        assert given == ([] if name in ("cuda_tests", "predict") else [str(frames)]), name  # predict: random images


def test_a_failing_or_timed_out_step_is_recorded_and_the_check_goes_on(tmp_path):
    """Every python call but the report's is a stand-in: sdt fails, metrics prints no figure, train_eager prints its
    figure then runs out of time (kept), evaluate reads the JSON as it stands (rewritten after every step)."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$1 $2" in
  "- "*) exec {shlex.quote(sys.executable)} "$@" ;;
  "bench/gpu_figures.py sdt") echo boom >&2; exit 3 ;;
  "bench/gpu_figures.py metrics") echo "no figure here" ;;
  "bench/gpu_figures.py evaluate") {shlex.quote(sys.executable)} -c "import json, os
print('FIGURE steps_so_far:', len(json.load(open(os.environ['OUT']))['steps']))" ;;
  "-m pytest") echo "3 passed in 0.5s" ;;
  *) if [[ "$*" == *--no-compile* ]]; then echo "  step 2 img/s"; sleep 20; fi
     printf 'bench_train fake\\n  step 5 img/s\\n  loader 4 img/s\\n' ;;
esac
""")
    fake.chmod(0o755)
    out = tmp_path / "check.json"
    run = subprocess.run(["bash", str(SCRIPT), "--data", str(ROOT / "missing"), "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHON": str(fake), "GPU_CHECK_MAX_LIMIT_S": "3"})
    assert run.returncode == 1  # not every step ok
    record = json.loads(out.read_text())
    assert {"gpu", "torch", "cuda"} <= set(record)
    status = {s["step"]: s["status"] for s in record["steps"]}
    assert status == {"data": "failed (no figure in the output)", "train": "ok",
                      "train_eager": "timed out (1 figure lines kept)", "sdt": "failed (exit 3)",
                      "metrics": "failed (no figure in the output)", "evaluate": "ok", "cuda_tests": "ok",
                      "predict": "failed (no figure in the output)"}  # the stand-in prints none of its figures
    steps = {s["step"]: s for s in record["steps"]}
    assert steps["train_eager"]["figures"] == ["step 2 img/s"]
    assert steps["evaluate"]["figures"] == ["FIGURE steps_so_far: 5"]  # data .. metrics were in the JSON already
    assert steps["sdt"]["exit_code"] == 3 and "boom" in steps["sdt"]["output"] and steps["sdt"]["timeout_s"] == 35
    assert all(s["gpu"] == record["gpu"] for s in record["steps"])
    assert re.search(r"^sdt +failed \(exit 3\)", run.stdout, re.M)
    assert "   step 2 img/s" in run.stdout  # printed while the step ran
    assert {p.name for p in tmp_path.iterdir()} == {"python", "check.json"}  # no temporary file beside it


@pytest.mark.slow
def test_every_step_costs_at_most_half_its_limit_on_this_cpu_beside_its_gpu_work(tmp_path, cityscapes_fullres):
    """The same commands with CUDA absent: each stops after its set-up (exit 3) or skips (the CUDA tests); twice
    its CPU seconds (the process and its children) plus the GPU work allowed must fit its limit."""
    import resource

    steps = dry_run_steps("--data", str(cityscapes_fullres), python=sys.executable)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    costs = {}
    for name, limit, gpu_s, argv in steps:
        argv = [a.replace("$WORK", str(tmp_path)) for a in argv]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert result.returncode in (0, 3), (name, result.stdout[-1000:], result.stderr[-2000:])
        costs[name] = cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert 2 * cpu_s + gpu_s <= limit, (name, round(cpu_s, 1), gpu_s, limit)
    print(costs)
