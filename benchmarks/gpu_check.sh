#!/usr/bin/env bash
# clr_loop on a GPU, in one prepared run of under 8 minutes on an H100; every result in one folder.
#
#   benchmarks/gpu_check.sh [FOLDER]                  # on a GPU machine (FOLDER: $OUT, else ./gpu_check_out)
#   GPU_CHECK_TINY=1 benchmarks/gpu_check.sh FOLDER   # the same stages at tiny sizes, on any machine (a CPU too)
#
# Run from anywhere; it works in the repository root. The stages, each with its own log and time limit:
#   env     nvidia-smi, the driver, TensorFlow's and Keras's versions, the GPU's name (env.txt,
#           env.json, nvidia-smi.txt, gpu.csv, git.txt); fails when TensorFlow sees no GPU
#   tests   the suite's tests whose behaviour changes on a GPU: fusion, precision, device-resident
#           input, schedules under XLA, the XLA policy, resume (tests.log, tests.xml)
#   fusion  tests/gpu_fusion_test.py: the GPU's own optimised module of the jit-compiled train step
#           holds the schedule on the iteration counter, the convolution gradients and every
#           variable update, nothing leaving the device (fusion.log, hlo/: the modules read);
#           a skipped GPU case fails the stage
#   bench   `python -m benchmarks.bench --grid`: Keras fit, the loop on tf.data, the loop on
#           device-resident data, batch 64/256/1024 x float32/mixed_bfloat16/mixed_float16, per
#           step; and one whole-process epoch of the trainer against the tutorial (bench.log, bench.json)
#   main    `python -m clr_loop.train --mode=triangular2`, the 10-epoch main job, and its training
#           time against the 5 s goal (main.log, main_time.json, main_history.json)
# stages.txt lists each stage's status and seconds. A failing stage does not stop the next; the
# exit status is 1 when any stage failed or ran out of time. FOLDER.tar.gz, beside the folder,
# holds all of it (one file to copy off a machine that returns few).
#
# Settings (environment):
#   GPU_CHECK_TINY=1        tiny sizes (random 512/128-example data, batch 8/16/32, a few steps),
#                           no GPU required, the time limits x6 (a shared 2-core CPU is slow)
#   GPU_CHECK_DATA=DIR      the four Fashion-MNIST IDX .gz files (default: /usr/share/datasets/
#                           fashion-mnist, else ./data/fashion-mnist; else random files of the full
#                           size are written: timings hold, accuracies mean nothing; env.txt says so)
#   GPU_CHECK_STAGES=a,b    only these stages (default: env,tests,fusion,bench,main)
#   GPU_CHECK_TESTS="..."   the tests stage's pytest selectors (default: TESTS below)
#   GPU_CHECK_BATCH_SIZES, GPU_CHECK_PRECISIONS, GPU_CHECK_STEPS, GPU_CHECK_REPEATS, GPU_CHECK_WHOLE
#                           the benchmark's grid, timed steps, repeats, whole-process runs
#   GPU_CHECK_LIMIT_<STAGE>=S   that stage's time limit in seconds (e.g. GPU_CHECK_LIMIT_BENCH=300)
#   PYTHON                  the interpreter (default python3)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/benchmarks/gpu_check.sh"
PYTHON="${PYTHON:-python3}"
TINY="${GPU_CHECK_TINY:-0}"
STAGES=(env tests fusion bench main)
# Seconds per stage on a GPU machine: 470 in all, under the 8 minutes.
declare -A LIMIT=([env]=20 [tests]=150 [fusion]=40 [bench]=210 [main]=50)
TESTS="tests/fusion_test.py tests/precision_test.py tests/device_input_test.py tests/runtime_test.py
tests/schedules_test.py::test_variable_steps_inside_jit_compile
tests/schedules_compose_test.py::test_jit_compiled_on_int64_iterations_equals_eager
tests/lr_finder_test.py::test_ramp_values_inside_xla_and_after_a_config_round_trip
tests/resume_test.py::test_sigkill_twice_then_resume_is_bit_identical_to_uninterrupted
tests/resume_test.py::test_max_steps_stops_at_exactly_that_step"

cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
export PYTHONUNBUFFERED=1

if [[ "$TINY" == 1 ]]; then
  BATCH_SIZES="${GPU_CHECK_BATCH_SIZES:-8,16,32}"
  STEPS="${GPU_CHECK_STEPS:-4}"
  REPEATS="${GPU_CHECK_REPEATS:-1}"
  SCALE=6
else
  BATCH_SIZES="${GPU_CHECK_BATCH_SIZES:-64,256,1024}"
  STEPS="${GPU_CHECK_STEPS:-100}"
  REPEATS="${GPU_CHECK_REPEATS:-2}"
  SCALE=1
fi
PRECISIONS="${GPU_CHECK_PRECISIONS:-float32,mixed_bfloat16,mixed_float16}"
WHOLE="${GPU_CHECK_WHOLE:-1}"

# ---------------------------------------------------------------------------------------------
# One stage, run as `gpu_check.sh __stage NAME` under `timeout` (which ends its process group).

stage_env() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi >"$DIR/nvidia-smi.txt" 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv \
      >"$DIR/gpu.csv" 2>&1
  else
    echo "nvidia-smi: not found on this machine" | tee "$DIR/nvidia-smi.txt"
  fi
  { git rev-parse HEAD; git status --short; } >"$DIR/git.txt" 2>&1
  local require=--require_gpu
  [[ "$TINY" == 1 ]] && require=--norequire_gpu
  "$PYTHON" -m benchmarks.gpu_check env --out="$DIR" "$require" || return 1
  echo "data: $DATA_NOTE" | tee -a "$DIR/env.txt"
}

stage_tests() {
  # shellcheck disable=SC2086  # the selectors are words
  "$PYTHON" -m pytest -q -rs -p no:cacheprovider --junitxml="$DIR/tests.xml" ${GPU_CHECK_TESTS:-$TESTS}
}

stage_fusion() {
  mkdir -p "$DIR/hlo"
  GPU_CHECK_HLO_DIR="$DIR/hlo" "$PYTHON" -m pytest -v -rs -p no:cacheprovider tests/gpu_fusion_test.py \
    | tee "$WORK/fusion.out"
  local rc=${PIPESTATUS[0]}
  if [[ "$TINY" != 1 ]] && grep -q "SKIPPED" "$WORK/fusion.out"; then
    echo "gpu_check: the GPU case was skipped, so the fusion proof on the GPU did not run"
    return 1
  fi
  return "$rc"
}

stage_bench() {
  local tiny=()
  [[ "$TINY" == 1 ]] && tiny=(--examples=256)
  "$PYTHON" -m benchmarks.bench --grid --batch_sizes="$BATCH_SIZES" --precisions="$PRECISIONS" \
    --steps="$STEPS" --repeats="$REPEATS" --whole_process="$WHOLE" --dataset_dir="$DATA" \
    "${tiny[@]}" --out="$DIR/bench.json"
}

stage_main() {
  local workdir="$WORK/main_run" start end rc
  echo "python -m clr_loop.train --mode=triangular2 --dataset_dir=$DATA --workdir=$workdir"
  start=$(date +%s.%N)
  "$PYTHON" -m clr_loop.train --mode=triangular2 --dataset_dir="$DATA" --workdir="$workdir"
  rc=$?
  end=$(date +%s.%N)
  echo "whole process: $(awk "BEGIN {printf \"%.2f\", $end - $start}") s wall (exit $rc)"
  cp "$workdir/history.json" "$DIR/main_history.json" 2>/dev/null
  (( rc == 0 )) || return "$rc"
  "$PYTHON" -m benchmarks.gpu_check train_time "$workdir" --out="$DIR/main_time.json"
}

if [[ "${1:-}" == __stage ]]; then
  DIR="$2" DATA="$3" DATA_NOTE="$4" WORK="$5"
  "stage_$6"
  exit $?
fi

# ---------------------------------------------------------------------------------------------
# The driver.

DIR="${1:-${OUT:-$REPO/gpu_check_out}}"
mkdir -p "$DIR" || exit 2
DIR="$(cd "$DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
IFS=, read -r -a WANTED <<<"${GPU_CHECK_STAGES:-$(IFS=,; echo "${STAGES[*]}")}"
for stage in "${WANTED[@]}"; do
  [[ -n "${LIMIT[$stage]:-}" ]] || { echo "gpu_check: unknown stage '$stage' (stages: ${STAGES[*]})" >&2; exit 2; }
done

if [[ -n "${GPU_CHECK_DATA:-}" ]]; then
  DATA="$GPU_CHECK_DATA" DATA_NOTE="the IDX files in $GPU_CHECK_DATA"
elif [[ "$TINY" == 1 ]]; then
  DATA="$WORK/idx" DATA_NOTE="tiny random IDX files (512 train, 128 test examples)"
  "$PYTHON" -m benchmarks.gpu_check idx_data "$DATA" --train=512 --test=128 >/dev/null 2>"$WORK/idx.err" \
    || { cat "$WORK/idx.err" >&2; exit 2; }
elif [[ -d /usr/share/datasets/fashion-mnist ]]; then
  DATA=/usr/share/datasets/fashion-mnist DATA_NOTE="real Fashion-MNIST in $DATA"
elif [[ -d "$REPO/data/fashion-mnist" ]]; then
  DATA="$REPO/data/fashion-mnist" DATA_NOTE="real Fashion-MNIST in $DATA"
else
  DATA="$WORK/idx" DATA_NOTE="NO Fashion-MNIST found: random IDX files of the full size (timings hold; accuracies mean nothing)"
  "$PYTHON" -m benchmarks.gpu_check idx_data "$DATA" --train=60000 --test=10000 >/dev/null 2>"$WORK/idx.err" \
    || { cat "$WORK/idx.err" >&2; exit 2; }
fi

: >"$DIR/stages.txt"
FAILED=()
started=$(date +%s)
echo "gpu_check: $( [[ "$TINY" == 1 ]] && echo tiny || echo GPU ) mode, results in $DIR; data: $DATA_NOTE"
for stage in "${WANTED[@]}"; do
  override="GPU_CHECK_LIMIT_${stage^^}"
  limit="${!override:-$(( LIMIT[$stage] * SCALE ))}"
  t0=$(date +%s.%N)
  timeout --kill-after=5 "$limit" "$SELF" __stage "$DIR" "$DATA" "$DATA_NOTE" "$WORK" "$stage" >"$DIR/$stage.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT(${limit}s)" ;;
    *) status="FAILED(exit $rc)" ;;
  esac
  (( rc == 0 )) || FAILED+=("$stage")
  line=$(printf "%-7s %-16s %7.1f s  %s" "$stage" "$status" "$(awk "BEGIN {print $t1 - $t0}")" "$stage.log")
  echo "$line" | tee -a "$DIR/stages.txt"
done
total=$(( $(date +%s) - started ))
echo "total   $( ((${#FAILED[@]})) && echo "FAILED: ${FAILED[*]}" || echo ok )  ${total} s" | tee -a "$DIR/stages.txt"
tar -czf "$DIR.tar.gz" -C "$(dirname "$DIR")" "$(basename "$DIR")" && echo "gpu_check: archived in $DIR.tar.gz"
(( ${#FAILED[@]} == 0 ))
