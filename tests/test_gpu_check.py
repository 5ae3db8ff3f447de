"""bench/gpu_check.sh on the CPU: its syntax, the steps --dry-run lists (each command's entry point and flags
exist, the time limits fit in 9 minutes, the CUDA tests are all the tests that skip without CUDA), and that a
failing step is recorded while the check goes on to write its table and JSON."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEP_LINE = re.compile(r"^\[(\w+)\] timeout (\d+) s: (.*)$")


def dry_run(*flags: str) -> list[tuple[str, int, list[str]]]:
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", *flags], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHON": "python"}).stdout
    return [(m[1], int(m[2]), shlex.split(m[3])) for m in map(STEP_LINE.match, out.splitlines()) if m]


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


def test_dry_run_lists_every_figure_within_8_minutes_with_existing_entry_points_and_flags(tmp_path):
    steps = dry_run("--data", str(tmp_path))  # no frames there: the synthetic data step comes first
    assert [name for name, _, _ in steps] == ["data", "cuda_tests", "sdt", "metrics", "augment", "grad_stats",
                                              "train", "predict"]
    assert sum(limit for _, limit, _ in steps) <= 9 * 60
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
    # With frames given, no data step, and every data-reading step reads them.
    frames = tmp_path / "frames"
    (frames / "gtFine" / "val" / "city").mkdir(parents=True)
    (frames / "gtFine" / "val" / "city" / "a_000000_000000_gtFine_labelIds.png").touch()
    steps = dry_run("--data", str(frames))
    assert "data" not in [name for name, _, _ in steps]
    assert all(argv[argv.index("--data") + 1] == str(frames) for _, _, argv in steps if "--data" in argv)


def test_a_failing_step_is_recorded_and_the_check_goes_on(tmp_path):
    """Every python call but the report's is a stand-in: bench_sdt fails, metrics prints no figure."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case "$1" in
  -) exec {shlex.quote(sys.executable)} "$@" ;;
  bench/bench_sdt.py) echo boom >&2; exit 3 ;;
  bench/bench_metrics.py) echo "CUDA: not available, GPU section skipped" ;;
  -m) echo "3 passed in 0.5s" ;;
  *) printf 'device: fake\\noverhead of one logging step 1 %%\\n  step 5 img/s\\n' ;;
esac
""")
    fake.chmod(0o755)
    out = tmp_path / "check.json"
    run = subprocess.run(["bash", str(SCRIPT), "--data", str(ROOT / "missing"), "--out", str(out)],
                         capture_output=True, text=True, env={**os.environ, "PYTHON": str(fake)}, cwd=tmp_path)
    assert run.returncode == 1  # not every step ok
    record = json.loads(out.read_text())
    assert {"gpu", "torch", "cuda"} <= set(record)
    status = {s["step"]: s["status"] for s in record["steps"]}
    assert status == {"data": "failed (no figure in the output)", "cuda_tests": "ok", "sdt": "failed (exit 3)",
                      "metrics": "failed (no figure in the output)", "augment": "ok", "grad_stats": "ok",
                      "train": "ok", "predict": "failed (no figure in the output)"}  # the stand-in prints none
    sdt = next(s for s in record["steps"] if s["step"] == "sdt")
    assert sdt["exit_code"] == 3 and "boom" in sdt["output"] and sdt["timeout_s"] == 45
    assert re.search(r"^sdt +failed \(exit 3\)", run.stdout, re.M)
    assert {p.name for p in tmp_path.iterdir()} == {"python", "check.json"}  # no temporary file beside it
