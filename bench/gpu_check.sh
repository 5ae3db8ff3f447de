#!/usr/bin/env bash
# The GPU figures BENCHMARKS.md waits for, in one run of under 9 minutes on one H100/H200:
#
#   bash bench/gpu_check.sh                        # prints one table, writes gpu_check.json
#   bash bench/gpu_check.sh --out DIR/check.json --data /path/to/cityscapes_fullres
#   bash bench/gpu_check.sh --dry-run              # lists each step's command and time limit, runs nothing
#
# Steps: the tests that skip without CUDA; compute_sdt_torch per 1024x2048 label (bench_sdt.py); metrics
# images/s on the GPU (bench_metrics.py); augmentation on the GPU (bench_augment.py); the overhead of a
# --log-grad-norms step at full size (bench_grad_stats.py); train.py's default training step with data and
# SDT on the device, full size (bench_train.py); predict.py's inference modes (bench_predict.py). Each runs
# under `timeout` with its own limit (the limits add up to 8 min 45 s); a step that fails or runs out of time
# is recorded as such and the check goes on. A step is "ok" when it exits 0 and prints its figure (a CUDA section skipped for want of a GPU is not ok).
# --data: real Cityscapes-layout frames (default: the bench scripts' ../shared/data/cityscapes_fullres);
# without them a few synthetic 1024x2048 frames are generated first. The JSON (written atomically) holds
# the card's name, driver, torch and CUDA versions, and per step its command, limit, exit code, seconds,
# figure lines and output; bench_train's own JSON record is embedded.
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
# step NAME TIMEOUT_S FIGURE_REGEX COMMAND: FIGURE_REGEX picks the figure lines out of the step's output.
NAMES=(); TIMEOUTS=(); FIGURES=(); COMMANDS=()
step() { NAMES+=("$1"); TIMEOUTS+=("$2"); FIGURES+=("$3"); COMMANDS+=("$4"); }

if ! ls "$DATA"/gtFine/val/*/*_gtFine_labelIds.png >/dev/null 2>&1; then
  step data 30 "wrote" "$PYTHON -m data_utils.synthetic --out $WORK/data --train 2 --val 4 --height 1024 --width 2048"
  DATA=$WORK/data
fi
# The tests skipped without CUDA (tests/test_gpu_check.py keeps this list equal to theirs).
CUDA_TESTS="tests/test_data.py::test_batch_augment_same_on_gpu tests/test_metrics.py::test_cuda_equals_cpu \
tests/test_train.py::test_the_micro_step_with_its_nonfinite_guard_makes_no_host_sync"
step cuda_tests 60 "^[0-9]+ passed in " "$PYTHON -m pytest -q -rs -p no:cacheprovider $CUDA_TESTS"
step sdt 45 "compute_sdt_torch .*ms per label|Triton path unavailable" \
  "$PYTHON bench/bench_sdt.py --data $DATA --frames 2 --torch-frames 0 --cuda-iters 20"
step metrics 45 "^segmentation_image_stats, .*img/s" \
  "$PYTHON bench/bench_metrics.py --data $DATA --images 4 --ref-images 1 --repeats 2 --cuda-batch 4"
step augment 30 "^device: |img/s|^ratio" "$PYTHON bench/bench_augment.py --device cuda --batch 8 --data $DATA"
step grad_stats 60 "^overhead|^amortised|^peak memory" \
  "$PYTHON bench/bench_grad_stats.py --device cuda --backbone convnextv2_base --head-channels 512 --height 1024 \
--width 2048 --batch 2 --amp bf16 --repeats 3"
# train.py's defaults (the paper's recipe at 1024x2048, bf16, compile, SDT on the device, 8 loader workers);
# a warm-up of one accumulation window, the first micro-step compiles (~2 min).
step train 210 "^  (step|loader) " "$PYTHON bench/bench_train.py --warmup 4 --steps 8 --frames 4 --json $WORK/train.json"
# ---- predict (issue 25) ----------------------------------------------------------------------------------------
# predict.py's inference modes (engine/inference.py) for the base model at 1024x2048, bf16: images/s, ratio to
# whole and peak memory per mode (bench_predict.py; BENCHMARKS.md "Predict: inference modes").
step predict 45 "^(whole|slide|flip)" "$PYTHON bench/bench_predict.py --device cuda --backbone convnextv2_base \
--head-channels 512 --images 8 --repeats 2"
# ---- end predict -----------------------------------------------------------------------------------------------

if [ "$DRY_RUN" = 1 ]; then
  total=0
  for i in "${!NAMES[@]}"; do
    printf '[%s] timeout %s s: %s\n' "${NAMES[$i]}" "${TIMEOUTS[$i]}" "${COMMANDS[$i]}"
    total=$((total + TIMEOUTS[i]))
  done
  echo "total time limit: $total s; writes $OUT"
  exit 0
fi

# -------------------------------------------------------------------------------------------------- run
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}
  echo "== [$name] (at most ${TIMEOUTS[$i]} s) ${COMMANDS[$i]}"
  start=$EPOCHREALTIME
  timeout --kill-after=10 "${TIMEOUTS[$i]}" bash -c "${COMMANDS[$i]}" >"$WORK/$name.log" 2>&1
  printf '%s %s %s\n' "$?" "$start" "$EPOCHREALTIME" >"$WORK/$name.rc"
  tail -n 3 "$WORK/$name.log" | sed 's/^/   /'
done

# ------------------------------------------------------------------------------------ table and JSON
export WORK OUT DATA
printf '%s\n' "${NAMES[@]}" >"$WORK/names"
printf '%s\n' "${TIMEOUTS[@]}" >"$WORK/timeouts"
printf '%s\n' "${FIGURES[@]}" >"$WORK/figures"
printf '%s\n' "${COMMANDS[@]}" >"$WORK/commands"
"$PYTHON" - <<'EOF'
import json, os, re, subprocess, sys
from pathlib import Path

from utils.fileio import atomic_write_json

work = Path(os.environ["WORK"])
lines = {k: (work / k).read_text().splitlines() for k in ("names", "timeouts", "figures", "commands")}
try:
    card = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
except (OSError, subprocess.TimeoutExpired):
    card = "unknown (no nvidia-smi)"
try:
    import torch
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
except ImportError as e:
    versions = {"torch": f"not importable ({e})"}
record = {"gpu": card, **versions, "data": os.environ["DATA"], "steps": []}
for name, timeout, figure, command in zip(*(lines[k] for k in ("names", "timeouts", "figures", "commands"))):
    rc, start, end = (work / f"{name}.rc").read_text().split()
    log = (work / f"{name}.log").read_text(errors="replace")
    figures = [line.strip() for line in log.splitlines() if re.search(figure, line)]
    rc = int(rc)
    status = ("timed out" if rc in (124, 137) else f"failed (exit {rc})" if rc else
              "ok" if figures else "failed (no figure in the output)")
    entry = {"step": name, "status": status, "command": command, "timeout_s": int(timeout), "exit_code": rc,
             "seconds": round(float(end) - float(start), 1), "figures": figures, "output": log[-20000:]}
    if (work / f"{name}.json").is_file():
        entry["report"] = json.loads((work / f"{name}.json").read_text())
    record["steps"].append(entry)
atomic_write_json(os.environ["OUT"], record)
print(f"\nGPU check: {card}, torch {versions.get('torch')}, CUDA {versions.get('cuda')}")
print(f"{'step':<11} {'status':<32} {'s':>6}  figures")
for s in record["steps"]:
    first, *rest = s["figures"] or ["-"]
    print(f"{s['step']:<11} {s['status']:<32} {s['seconds']:6.1f}  {first}")
    for line in rest:
        print(f"{'':<51}  {line}")
print(f"written: {os.environ['OUT']}")
sys.exit(0 if all(s["status"] == "ok" for s in record["steps"]) else 1)
EOF
