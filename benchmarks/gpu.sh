#!/usr/bin/env bash
# The GPU checks of robot-rl in one script, sized for 10 minutes on one H100/H200:
#   1. benchmarks/learner.py --device cuda     every algorithm's update rate (bf16 autocast), the AM speedup
#   2. benchmarks/goal_reaching.py at 64x64    Actionable Models, a 50k-update budget on CUDA
#   3. robot-rl demo scale=gpu                 the whole flywheel at the GPU scale (what is left of the time)
#
#   benchmarks/gpu.sh [OUT_DIR]      (default: runs/gpu; needs MUJOCO_GL=egl and the repo's dependencies)
#
# Writes OUT_DIR/learner_cuda.json, goal_reaching_64.json (+ curves, calibration, success by distance),
# demo/summary.json and demo/report.md, and OUT_DIR/gpu.log (every command's output). Each stage has a
# hard time limit so the three fit in 10 minutes together; a stage that runs out writes what it has
# and the script goes on. The figures belong next to the CPU ones in docs/learning.md.
set -uo pipefail
OUT=${1:-runs/gpu}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" | tee "$LOG" || exit 1

stage() {  # stage SECONDS NAME COMMAND...
  local secs=$1 name=$2
  shift 2
  echo "== $name (limit ${secs}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --signal=INT "$secs" "$@" 2>&1 | tee -a "$LOG"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s" | tee -a "$LOG"
}

stage 120 learner "$PY" -m benchmarks.learner --device cuda --json "$OUT/learner_cuda.json"
stage 250 goal_reaching "$PY" -m benchmarks.goal_reaching --device cuda --learners am --image-size 64 --workers 12 \
  --updates 50000 --batch 256 --json "$OUT/goal_reaching_64.json" --out "$OUT/goal_reaching_64"
stage 210 demo "$PY" -m robot_rl.cli demo scale=gpu "out=$OUT/demo" progress=false
echo "done: $OUT" | tee -a "$LOG"
