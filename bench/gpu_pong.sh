#!/usr/bin/env bash
# The GPU figure for Pong, prepared: one run of under 10 minutes on one GPU and 16 cores.
#
#   1. The seed's request -- IMPALA on PongNoFrameskip-v4, the learner on the GPU
#      ({"num_gpus": 1}), 15 env runners ({"num_workers": 15}) -- until a mean reward of 18 or
#      the time budget; prints the wall time, the agent steps and the mean reward reached.
#   2. Sampling only (no learner) with 1, 2, 4, 8 and 15 EnvRunners
#      (bench/trainer_throughput.py --runners): env steps/s and the fraction of linear scaling.
#
# Everything is set by environment variables, so the same script runs on CPU with tiny budgets:
#   RLQ_GPU_BUDGET_S      training seconds of the learning run (default 300: the 5-minute target)
#   RLQ_GPU_RUNNERS       EnvRunners of the learning run (default 15, the seed's num_workers)
#   RLQ_SCALING_RUNNERS   EnvRunner counts of the sampling-only run (default "1 2 4 8 15")
#   RLQ_SCALING_SECONDS   seconds of sampling per count (default 15)
#   RLQ_WHEELS            wheels to install when the Python lacks ray/gymnasium/ale-py
#                         (default outputs/wheels, which `make gpu-wheels` fills for a CUDA image's Python 3.12)
#   PY                    the Python to use (default: .venv/bin/python, else python3, whichever
#                         imports the trainer's packages; a CUDA build of torch is preferred)
# CPU check (here, about 3 minutes on 2 cores):
#   RLQ_GPU_BUDGET_S=20 RLQ_GPU_RUNNERS=1 RLQ_SCALING_RUNNERS="1 2" RLQ_SCALING_SECONDS=5 bash bench/gpu_pong.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BUDGET=${RLQ_GPU_BUDGET_S:-300}
RUNNERS=${RLQ_GPU_RUNNERS:-15}
SCALING=${RLQ_SCALING_RUNNERS:-1 2 4 8 15}
SCALING_S=${RLQ_SCALING_SECONDS:-15}
WHEELS=${RLQ_WHEELS:-outputs/wheels}
NEED='import ray, gymnasium, ale_py, cv2, torch; from ray.rllib.algorithms.impala import IMPALAConfig'
start=$(date +%s)

# --- a Python with the trainer's packages: one that has them (CUDA torch first), else wheels, else make install
has() { [ -n "$1" ] && command -v "$1" >/dev/null 2>&1 && "$1" -c "$NEED" >/dev/null 2>&1; }
cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
PYBIN=""
for c in ${PY:-} .venv/bin/python python3; do
	if has "$c"; then
		if [ -z "$PYBIN" ] || { cuda "$c" && ! cuda "$PYBIN"; }; then PYBIN=$c; fi
	fi
done
if [ -z "$PYBIN" ] || ! cuda "$PYBIN"; then
	base=${PY:-python3}
	if compgen -G "$WHEELS/*.whl" >/dev/null && command -v "$base" >/dev/null && cuda "$base"; then
		echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into /tmp/rlq-site for $base"
		"$base" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
			--target /tmp/rlq-site "$WHEELS"/*.whl
		export PYTHONPATH=/tmp/rlq-site${PYTHONPATH:+:$PYTHONPATH}
		has "$base" && PYBIN=$base
	elif [ -z "$PYBIN" ]; then
		make install
		PYBIN=.venv/bin/python
	fi
fi
has "$PYBIN" || { echo "no Python here imports ray[rllib], gymnasium, ale-py, opencv and torch" >&2; exit 1; }

GPUS=$("$PYBIN" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
GPU_NAME=$("$PYBIN" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')
CORES=$(nproc)
echo "machine: $CORES CPU cores, $GPU_NAME ($GPUS GPU(s)), load average $(cut -d' ' -f1 /proc/loadavg);" \
	"$PYBIN: $("$PYBIN" -c 'import sys, ray, torch; print(f"Python {sys.version.split()[0]}, ray {ray.__version__}, torch {torch.__version__}")')"
if [ "$GPUS" -ge 1 ]; then
	CONFIG="{\"num_gpus\": 1, \"num_workers\": $RUNNERS}"
else
	CONFIG="{\"num_workers\": $RUNNERS}"
	echo "no GPU visible to torch: the learner runs on the CPU (a check of the script, not the GPU figure)"
fi

# --- 1. the seed's request to 18 or the budget
OUT=$(mktemp -d "${TMPDIR:-/tmp}/rlq-gpu-pong.XXXXXX")
STOP="{\"episode_reward_mean\": 18, \"time_total_s\": $BUDGET}"
echo "learning: IMPALA PongNoFrameskip-v4 --config '$CONFIG' --stop '$STOP' (log: $OUT/train.log)"
t0=$(date +%s.%N)
rc=0
env -u RAY_ADDRESS -u MLFLOW_TRACKING_URI timeout $((BUDGET + 240)) "$PYBIN" -m trainer.train --run IMPALA \
	--env PongNoFrameskip-v4 --config "$CONFIG" --stop "$STOP" --checkpoint-freq 0 \
	--output-dir "$OUT/trainer" >"$OUT/train.log" 2>&1 || rc=$?
t1=$(date +%s.%N)
"$PYBIN" - "$OUT/trainer/metrics.jsonl" "$t0" "$t1" "$rc" <<'EOF' || tail -20 "$OUT/train.log"
import json, sys
from pathlib import Path

path, t0, t1, rc = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
if not rows:
    print(f"learning: no iteration reported (trainer exit {rc}); see the log")
    sys.exit(1)
last = rows[-1]
hit = next((r for r in rows if (r.get("episode_reward_mean") or -99) >= 18), None)
print(
    f"learning: wall time {t1 - t0:.0f} s (training {last['time_total_s']:.0f} s), "
    f"{last['timesteps']:,} agent steps, mean reward {last['episode_reward_mean']} "
    f"(last 100 episodes), {last.get('env_steps_per_s', 0):,.0f} env steps/s in the last iteration; "
    + (f"18 reached at {hit['timesteps']:,} steps, {hit['time_total_s']:.0f} s of training" if hit else "18 not reached")
    + f"; trainer exit {rc}"
)
EOF

# --- 2. sampling-only scaling
"$PYBIN" bench/trainer_throughput.py --runners "$(echo "$SCALING" | tr ' ' ',')" --scaling-seconds "$SCALING_S" \
	| grep -v '^BENCH_RESULT'
echo "total wall time $(($(date +%s) - start)) s"
