#!/usr/bin/env bash
# GPU check: the devices backend with 8 workers sharing one GPU and, in the same run, the simulator
# on the same scenario; then the calibrated simulation against the real run (fidelity) and the
# numerics benchmark (benchmarks/numerics.py).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default results/gpu-check)
#
# Installs nothing: it needs a .venv whose jax already sees the GPU (e.g. jax[cuda12] installed
# beforehand, from a local wheel cache if the machine is offline). It stops with status 3 when JAX
# sees no GPU, rather than measuring a CPU and calling it a GPU (ALLOW_CPU=1 runs it on the CPU anyway,
# to check the script itself; UPDATES and NUMERICS_UPDATES shorten it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-results/gpu-check}
UPDATES=${UPDATES:-3000}
mkdir -p "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # 8 worker threads and the server share one GPU's memory

"$PY" - <<'EOF' || exit 3
import jax, os, sys
gpus = [d for d in jax.devices() if d.platform == "gpu"]
if not gpus and os.environ.get("ALLOW_CPU") == "1":
    print(f"ALLOW_CPU=1: checking the script on {jax.devices()} (these are no GPU figures)")
elif not gpus:
    sys.exit(f"no GPU visible to JAX (devices: {jax.devices()}); install a CUDA jax in .venv first: this script installs nothing")
print(f"jax {jax.__version__}: {len(gpus)} GPU(s): {[d.device_kind for d in gpus]}")
EOF
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/card       /'
fi

cat > "$OUT/scenario.toml" <<EOF
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
EOF

echo "== real: devices backend, 8 worker threads on one GPU"
rm -rf "$OUT/real" "$OUT/sim"
.venv/bin/asgd-sim run "$OUT/scenario.toml" --backend devices --out "$OUT/real"
echo "== simulator, the same scenario (nominal timing)"
.venv/bin/asgd-sim run "$OUT/scenario.toml" --out "$OUT/sim"
echo "== fidelity: the simulator calibrated on the real trace, 3 seeds"
.venv/bin/asgd-sim fidelity "$OUT/real" --seeds 3
echo "== replay of the real trace reproduces its parameters"
"$PY" - "$OUT/real" <<'EOF'
import sys
import numpy as np
from jax.flatten_util import ravel_pytree
from asgd_sim.simulate import replay
run = sys.argv[1]
real = np.load(f"{run}/final_params.npy")
diff = float(np.abs(real - np.asarray(ravel_pytree(replay(run).params)[0])).max())
print(f"replay     max |real - replayed| = {diff:.3g} (GPU float rounding; 0 on CPU)")
EOF
echo "== numerics benchmark"
"$PY" benchmarks/numerics.py --updates "${NUMERICS_UPDATES:-5000}" --workers 8 64 | tee "$OUT/numerics_benchmark.json"
echo "== summary"
"$PY" - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
real = json.load(open(f"{out}/real/summary.json"))
sim = json.load(open(f"{out}/sim/summary.json"))
fid = json.load(open(f"{out}/real/fidelity.json"))
print(f"real updates/s       {real['updates_per_s']:.1f}  (staleness mean {real['staleness']['mean']:.2f})")
print(f"simulated updates/s  {sim['updates_per_s']:.1f}  (nominal scenario, before calibration)")
print(f"fidelity             throughput error {100 * fid['throughput_error']:.1f} %, staleness KS {fid['staleness_ks']:.3f}")
EOF
