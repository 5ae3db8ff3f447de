#!/usr/bin/env bash
# The GPU figures BENCHMARKS.md waits for, in one run of at most 7 minutes (cold compile included) on one H100/H200:
#
#   bash bench/gpu_check.sh                        # prints one table, writes gpu_check.json
#   bash bench/gpu_check.sh --out DIR/check.json --data /path/to/cityscapes_fullres
#   bash bench/gpu_check.sh --dry-run              # lists each step's command and time limit, runs nothing
#
# Steps, most wanted first: train.py's default training step at 1024x2048, batch 2, bf16 (compile, SDT and
# augmentation on the device, fused loss; bench_train.py, on the real train frames when --data has them), the
# same in plain eager (no compile, NCHW); compute_sdt_torch per 19-class label against CPU compute_sdt on the
# same labels; metrics img/s on the GPU, both profiles, C = 19; evaluation img/s with the forward
# (bench/gpu_figures.py); the tests that skip without CUDA; predict.py's inference modes (whole, slide, flip +
# scales) for the base model at 1024x2048 (bench_predict.py). No CPU reference runs here: the CPU benchmarks have
# their own commands. Every step does its GPU work first and prints each figure the moment it has it (unbuffered);
# after every step the JSON is rewritten, so a step that runs out of time keeps the figures it printed and a
# killed check keeps the steps before. Each step runs under `timeout` with its own limit: twice its CPU-side
# cost on the 2-core development machine plus its GPU work (tests/test_gpu_check.py times the same commands
# without CUDA: each stops after its set-up with exit status 3). A step is "ok" when it exits 0 and prints its
# figure. --data: real Cityscapes-layout frames (default: ../shared/data/cityscapes_fullres); without val label
# maps a few synthetic 1024x2048 frames are generated first. The JSON (written atomically) holds the card's
# name, driver, torch and CUDA versions, and per step its command, limit, exit code, seconds, figure lines (each
# with the card) and output; bench_train's own JSON record is embedded. GPU_CHECK_MAX_LIMIT_S caps every limit
# (the tests' stand-in steps).
set -uo pipefail

CALLER_DIR=$PWD
cd "$(dirname "$0")/.."
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }
PYTHON=${PYTHON:-python}
OUT=$(absolute gpu_check.json)
DATA=$(dirname "$PWD")/shared/data/cityscapes_fullres
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$(absolute "$2"); shift 2 ;;
    --data) DATA=$(absolute "$2"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: gpu_check.sh: unknown argument '$1'; use --out FILE, --data DIR or --dry-run" >&2; exit 2 ;;
  esac
done

if [ "$DRY_RUN" = 1 ]; then
  WORK='$WORK'  # shown as is: nothing is created
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi

# ------------------------------------------------------------------------------------------------ steps
# FIGURE_REGEX picks the figure lines out of a step's output.
NAMES=(); TIMEOUTS=(); GPU_SECONDS=(); FIGURES=(); COMMANDS=()
step() { NAMES+=("$1"); TIMEOUTS+=("$2"); GPU_SECONDS+=("$3"); FIGURES+=("$4"); COMMANDS+=("$5"); }

# Real frames: val label maps (sdt, metrics) and train images (train, evaluate); else synthetic ones for all.
if ! ls "$DATA"/gtFine/val/*/*_gtFine_labelIds.png "$DATA"/leftImg8bit/train/*/*_leftImg8bit.png >/dev/null 2>&1
then
  step data 30 0 "wrote" "$PYTHON -m data_utils.synthetic --out $WORK/data --train 2 --val 4 --height 1024 --width 2048"
  DATA=$WORK/data
fi
# train.py's defaults: the paper's recipe at 1024x2048, batch 2, bf16, compile, SDT and augmentation on the device,
# 8 loader workers; on the train frames of --data.
TRAIN="$PYTHON bench/bench_train.py --data-root $DATA --warmup 4 --steps 8 --cuda-only"  # whole optimizer steps
FIGURES_PY="$PYTHON bench/gpu_figures.py"
# step NAME LIMIT_S GPU_S FIGURE_REGEX COMMAND; GPU_S: the GPU work the limit allows beyond twice the CPU cost.
step train 180 140 "^bench_train|^  (step|loader) " "$TRAIN --json $WORK/train.json"  # the first step compiles (~2 min)
step train_eager 55 30 "^bench_train|^  step " \
  "$TRAIN --parts step --no-compile --no-channels-last --json $WORK/train_eager.json"
step sdt 35 25 "^FIGURE " "$FIGURES_PY sdt --data $DATA --images 4"  # includes the kernels' compile and self-check
step metrics 20 10 "^FIGURE " "$FIGURES_PY metrics --data $DATA --images 8"
step evaluate 40 25 "^FIGURE " "$FIGURES_PY evaluate --data $DATA"
# The tests skipped without CUDA (tests/test_gpu_check.py keeps this list equal to theirs).
CUDA_TESTS="tests/test_data.py::test_batch_augment_same_on_gpu tests/test_metrics.py::test_cuda_equals_cpu \
tests/test_hd95.py::test_cuda_equals_cpu \
tests/test_train.py::test_the_micro_step_with_its_nonfinite_guard_makes_no_host_sync"
step cuda_tests 30 10 "^[0-9]+ passed in " "$PYTHON -m pytest -q -rs -p no:cacheprovider $CUDA_TESTS"
# predict.py's inference modes (engine/inference.py) for the base model at 1024x2048, bf16: images/s, ratio to
# whole and peak memory per mode (bench_predict.py; BENCHMARKS.md "Predict: inference modes").
step predict 30 12 "^(whole|slide|flip)" "$PYTHON bench/bench_predict.py --device cuda --backbone convnextv2_base \
--head-channels 512 --images 4 --repeats 1"

if [ "$DRY_RUN" = 1 ]; then
  total=0
  for i in "${!NAMES[@]}"; do
    printf '[%s] timeout %s s (GPU work %s s): %s\n' \
      "${NAMES[$i]}" "${TIMEOUTS[$i]}" "${GPU_SECONDS[$i]}" "${COMMANDS[$i]}"
    total=$((total + TIMEOUTS[i]))
  done
  echo "total time limit: $total s; writes $OUT"
  exit 0
fi

# ------------------------------------------------------------------------------------ table and JSON
# write_report [final]: the JSON of the steps done so far (rewritten after each step); "final" also prints the
# table and exits 0 only when every step is ok.
export WORK OUT DATA PYTHONUNBUFFERED=1  # unbuffered: a figure printed before a timeout is in the log
printf '%s\n' "${NAMES[@]}" >"$WORK/names"
printf '%s\n' "${TIMEOUTS[@]}" >"$WORK/timeouts"
printf '%s\n' "${FIGURES[@]}" >"$WORK/figures"
printf '%s\n' "${COMMANDS[@]}" >"$WORK/commands"
write_report() {
"$PYTHON" - "$@" <<'EOF'
import json, os, re, subprocess, sys
from pathlib import Path

from utils.fileio import atomic_write_json

work = Path(os.environ["WORK"])
final = sys.argv[1:] == ["final"]
lines = {k: (work / k).read_text().splitlines() for k in ("names", "timeouts", "figures", "commands")}
about = work / "about.json"  # the card and versions, found once (importing torch takes seconds)
if not about.is_file():
    try:
        card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        card = "unknown (no nvidia-smi)"
    try:
        import torch
        versions = {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "cuda_available": torch.cuda.is_available()}
    except ImportError as e:
        versions = {"torch": f"not importable ({e})"}
    about.write_text(json.dumps({"gpu": card, **versions}))
record = {**json.loads(about.read_text()), "data": os.environ["DATA"], "steps": []}
card = record["gpu"]
for name, timeout, figure, command in zip(*(lines[k] for k in ("names", "timeouts", "figures", "commands"))):
    if not (work / f"{name}.rc").is_file():
        continue  # not run yet
    rc, start, end = (work / f"{name}.rc").read_text().split()
    log = (work / f"{name}.log").read_text(errors="replace")
    figures = [line.strip() for line in log.splitlines() if re.search(figure, line)]
    rc = int(rc)
    status = (f"timed out ({len(figures)} figure lines kept)" if rc in (124, 137) else f"failed (exit {rc})" if rc
              else "ok" if figures else "failed (no figure in the output)")
    entry = {"step": name, "status": status, "command": command, "timeout_s": int(timeout), "exit_code": rc,
             "seconds": round(float(end) - float(start), 1), "gpu": card, "figures": figures, "output": log[-20000:]}
    if (work / f"{name}.json").is_file():
        entry["report"] = json.loads((work / f"{name}.json").read_text())
    record["steps"].append(entry)
atomic_write_json(os.environ["OUT"], record)
if not final:
    sys.exit(0)
print(f"\nGPU check: {card}, torch {record.get('torch')}, CUDA {record.get('cuda')}")
print(f"{'step':<11} {'status':<32} {'s':>6}  figures")
for s in record["steps"]:
    first, *rest = s["figures"] or ["-"]
    print(f"{s['step']:<11} {s['status']:<32} {s['seconds']:6.1f}  {first}")
    for line in rest:
        print(f"{'':<51}  {line}")
print(f"written: {os.environ['OUT']}")
sys.exit(0 if all(s["status"] == "ok" for s in record["steps"]) else 1)
EOF
}

# -------------------------------------------------------------------------------------------------- run
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}
  echo "== [$name] (at most ${TIMEOUTS[$i]} s) ${COMMANDS[$i]}"
  start=$EPOCHREALTIME
  # the figure lines on the console as they come; everything in the log
  limit=${TIMEOUTS[$i]}
  if [ -n "${GPU_CHECK_MAX_LIMIT_S:-}" ] && [ "$GPU_CHECK_MAX_LIMIT_S" -lt "$limit" ]; then
    limit=$GPU_CHECK_MAX_LIMIT_S
  fi
  timeout --kill-after=10 "$limit" bash -c "${COMMANDS[$i]}" 2>&1 | tee "$WORK/$name.log" \
    | { grep --line-buffered -E "${FIGURES[$i]}" || true; } | sed -u 's/^/   /'
  printf '%s %s %s\n' "${PIPESTATUS[0]}" "$start" "$EPOCHREALTIME" >"$WORK/$name.rc"
  write_report
done
write_report final
