#!/usr/bin/env bash
# GPU check: the devices backend with 8 workers sharing one GPU and, in the same run, the simulator
# on the same scenario; then the calibrated simulation against the real run (fidelity), the replay
# of the real trace, and the numerics benchmark (benchmarks/numerics.py). Prints a short table.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default results/gpu-check)
#
# Installs nothing. It needs a Python whose jax already sees the GPU: .venv/bin/python when there
# is one, else python3 (PYTHON=... picks another), with asgd_sim importable (the repository root is
# put on PYTHONPATH). It stops with status 3 when JAX sees no GPU, rather than measuring a CPU and
# calling it a GPU; ALLOW_CPU=1 runs it on the CPU anyway, to check the script itself, and UPDATES,
# NUMERICS_UPDATES (0: no numerics benchmark), REPEAT, LONG_UPDATES (0: no long run), MATRIX_UPDATES
# (0: no matrix), MATRIX_KINDS and MATRIX_WORKERS shorten it. Each stage has a time
# limit (STAGE_LIMIT seconds) and a failing stage does not stop the later ones: the exit status
# says whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PY=$PYTHON
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${1:-results/gpu-check}
UPDATES=${UPDATES:-3000}
NUMERICS_UPDATES=${NUMERICS_UPDATES:-5000}
REPEAT=${REPEAT:-3}
LONG_UPDATES=${LONG_UPDATES:-20000}
STAGE_LIMIT=${STAGE_LIMIT:-240}
MATRIX_UPDATES=${MATRIX_UPDATES:-1500}
MATRIX_KINDS=${MATRIX_KINDS:-}     # empty: every algorithm kind of benchmarks/matrix.py
MATRIX_WORKERS=${MATRIX_WORKERS:-6,64}
mkdir -p "$OUT"
rm -f "$OUT"/numerics_benchmark*.json "$OUT/gpu_tests.txt" "$OUT/matrix_algorithms.json"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # 8 worker threads and the server share one GPU's memory

"$PY" - <<'PYEOF' || exit 3
import jax, os, sys
gpus = [d for d in jax.devices() if d.platform == "gpu"]
if not gpus and os.environ.get("ALLOW_CPU") == "1":
    print(f"ALLOW_CPU=1: checking the script on {jax.devices()} (these are no GPU figures)")
elif not gpus:
    sys.exit(f"no GPU visible to JAX (devices: {jax.devices()}); use a Python with a CUDA jax: this script installs nothing")
print(f"jax {jax.__version__}: {len(gpus)} GPU(s): {[d.device_kind for d in gpus]}")
PYEOF
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/card.txt"
  sed "s/^/card       /" "$OUT/card.txt"
fi

failed=()
stage() {  # stage NAME COMMAND...: runs it under the time limit, logs it, and carries on if it fails
  local name=$1; shift
  echo "== $name"
  local start=$SECONDS
  if timeout "$STAGE_LIMIT" "$@"; then
    echo "   ($name: $((SECONDS - start)) s)"
  else
    echo "   ($name FAILED with status $? after $((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

cat > "$OUT/scenario.toml" <<TOML
# 8 workers on one GPU: an MLP on digits, async, one shard. compute is the simulator's guess of the
# per-gradient time; the real run measures it, and fidelity calibrates the simulator from that.
[run]
until_updates = $UPDATES
eval_every = 500
[[workers]]
count = 8
compute = 0.002
[network]
latency = 0.0001
bandwidth = inf
server_bandwidth = inf
[server]
apply_time = 0.0002
[model]
name = "mlp"
hidden = [512, 512]
[optimizer]
learning_rate = 0.05
TOML

rm -rf "$OUT/real" "$OUT/sim"
stage "real: devices backend, 8 worker threads on one GPU" \
  "$PY" -m asgd_sim run "$OUT/scenario.toml" --backend devices --out "$OUT/real" --quiet
stage "simulator, the same scenario (nominal timing)" \
  "$PY" -m asgd_sim run "$OUT/scenario.toml" --out "$OUT/sim" --quiet
stage "fidelity: the simulator calibrated on the real trace, 3 seeds" \
  "$PY" -m asgd_sim fidelity "$OUT/real" --seeds 3
rm -rf "$OUT/emulated"
stage "emulated: benchmarks/fidelity.toml with --emulate on the GPU, then fidelity" sh -c \
  "'$PY' -m asgd_sim run benchmarks/fidelity.toml --backend devices --emulate --out '$OUT/emulated' --quiet && '$PY' -m asgd_sim fidelity '$OUT/emulated' --seeds 5"
stage "replay of the real trace reproduces its parameters" "$PY" - "$OUT/real" <<'PYEOF'
import json, sys
import numpy as np
from jax.flatten_util import ravel_pytree
from asgd_sim.runner import replay
run = sys.argv[1]
real = np.load(f"{run}/final_params.npy")
diff = float(np.abs(real - np.asarray(ravel_pytree(replay(run).params)[0])).max())
json.dump({"max_abs_diff": diff}, open(f"{run}/replay_check.json", "w"))
print(f"replay     max |real - replayed| = {diff:.3g} (GPU float rounding; 0 on CPU)")
PYEOF
# The numerics engine's exactness tests (batched == one at a time, the history against a fold of
# the trace, theory) on the GPU's code paths, at full float32 precision: JAX's default lets an H100
# multiply float32 matrices in TF32, which changes the numbers, not the logic under test.
stage "numerics engine tests on the GPU (float32 matmuls at full precision)" env JAX_DEFAULT_MATMUL_PRECISION=highest sh -c \
  "'$PY' -m pytest -q -p no:cacheprovider tests/test_numerics_history.py tests/test_numerics_equivalence.py tests/test_numerics_theory.py > '$OUT/gpu_tests.txt' 2>&1; rc=\$?; tail -n 25 '$OUT/gpu_tests.txt'; exit \$rc"
if [ "$NUMERICS_UPDATES" -gt 0 ]; then
  stage "numerics benchmark, $NUMERICS_UPDATES updates" sh -c \
    "'$PY' benchmarks/numerics.py --updates $NUMERICS_UPDATES --workers 8 64 --repeat $REPEAT > '$OUT/numerics_benchmark.json'"
fi
if [ "$LONG_UPDATES" -gt 0 ]; then
  stage "numerics benchmark, $LONG_UPDATES updates, M = 64" sh -c \
    "'$PY' benchmarks/numerics.py --updates $LONG_UPDATES --workers 64 --repeat 1 > '$OUT/numerics_benchmark_long.json'"
fi

if [ "$MATRIX_UPDATES" -gt 0 ]; then
  # Every algorithm kind against its own hand loop (benchmarks/matrix.py's algorithms section);
  # its JSON judges the CPU targets, the summary below the GPU one (>= 10x at M = 64).
  stage "matrix: every algorithm vs its hand loop, $MATRIX_UPDATES updates, M = $MATRIX_WORKERS" sh -c \
    "'$PY' benchmarks/matrix.py --only algorithms --updates $MATRIX_UPDATES --workers $MATRIX_WORKERS ${MATRIX_KINDS:+--kinds $MATRIX_KINDS} > '$OUT/matrix_algorithms.json'"
fi
if [ "$NUMERICS_UPDATES" -gt 0 ]; then
  stage "profile of simulate at M = 64 (where the host's time goes)" "$PY" - "$OUT" <<'PYEOF'
import cProfile, io, pstats, sys
sys.path.insert(0, "benchmarks")
from numerics import simulator
simulator(64, 500)  # the process's one-time costs (imports, data) outside the profile; compiling stays in
profile = cProfile.Profile()
profile.enable()
end_to_end, steady, _ = simulator(64, 5000)
profile.disable()
text = io.StringIO()
pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
open(f"{sys.argv[1]}/profile_m64.txt", "w").write(f"end to end {end_to_end:.0f} upd/s, steady {steady:.0f} upd/s (under the profiler)\n" + text.getvalue())
print(f"written    {sys.argv[1]}/profile_m64.txt")
PYEOF
fi

echo "== summary"
"$PY" - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
def load(path):
    try:
        return json.load(open(os.path.join(out, path)))
    except (OSError, ValueError):
        return None
card = open(os.path.join(out, "card.txt")).read().strip() if os.path.exists(os.path.join(out, "card.txt")) else "no nvidia-smi"
print(f"card                     {card}")
real, sim, fid, rep = load("real/summary.json"), load("sim/summary.json"), load("real/fidelity.json"), load("real/replay_check.json")
emulated = load("emulated/fidelity.json")
if real:
    print(f"real updates/s           {real['updates_per_s']:.1f}  (staleness mean {real['staleness']['mean']:.2f}, final accuracy {real.get('final_accuracy')})")
if sim:
    print(f"simulated updates/s      {sim['updates_per_s']:.1f}  (nominal scenario, before calibration)")
if fid:
    print(f"fidelity                 throughput error {100 * fid['throughput_error']:.1f} %, staleness KS {fid['staleness_ks']:.3f}")
    handoff = [line for line in fid.get("calibration", "").splitlines() if line.startswith("lock handoff")]
    print(f"calibrated               {handoff[0] if handoff else 'no lock handoff line'}")
if emulated:
    print(f"fidelity, emulated       throughput error {100 * emulated['throughput_error']:.1f} %, staleness KS {emulated['staleness_ks']:.3f} "
          f"(benchmarks/fidelity.toml, real {emulated['throughput_real']:.1f} updates/s)")
if rep:
    print(f"replay                   max |real - replayed| = {rep['max_abs_diff']:.3g}")
if os.path.exists(os.path.join(out, "gpu_tests.txt")):
    lines = [line for line in open(os.path.join(out, "gpu_tests.txt")).read().splitlines() if line.strip()]
    print(f"numerics tests           {lines[-1] if lines else 'no output'}")
for name in ("numerics_benchmark.json", "numerics_benchmark_long.json"):
    bench = load(name)
    for row in (bench or {}).get("results", []):
        print(f"numerics M={row['workers']:<3} {row['updates']:>6} upd  simulate/hand: end-to-end {row['ratio_end_to_end']:.2f}x, "
              f"cached {(row.get('ratio_end_to_end_cached') or float('nan')):.2f}x, steady {row['ratio_steady']:.2f}x  "
              f"(sim steady {row['simulate_steady_updates_per_s']:.0f} upd/s, hand warm {row['hand_loop_warm_updates_per_s']:.0f})")
    for target in (bench or {}).get("targets", []):
        print(f"target   M={target['workers']:<3} {target['updates']:>6} upd  >= {target['target']:g}x steady: "
              f"{'met' if target['met'] else 'NOT met'} ({target['ratio_steady']:.2f}x)")
matrix = load("matrix_algorithms.json")
for row in (matrix or {}).get("algorithms", []):
    goal = 10.0 if row["workers"] >= 64 else 1.0
    print(f"matrix {row['kind']:<13} M={row['workers']:<3} {row['ratio']:6.2f}x its hand loop "
          f"({row['simulator_gradients_per_s']} vs {row['hand_loop_gradients_per_s']} gradients/s; GPU goal >= {goal:g}x: "
          f"{'met' if row['ratio'] >= goal else 'NOT met'}; max |params - hand loop's| {row['max_abs_param_diff']:.2g})")
PYEOF
if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed stage: %s\n' "${failed[@]}"
  exit 1
fi
