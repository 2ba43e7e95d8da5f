#!/usr/bin/env bash
# The GPU path in one prepared run (issue 16): train_speed per mode, a short bf16 training with loss
# curves / swap grid / recon_l1, the Market-size evaluation and its CPU parity, fp16 + GradScaler,
# two-process DDP. Everything lands in --out (summary.json, RESULTS.section.md); exit 0 = all passed.
#
#   bash benchmarks/gpu_check.sh --device cuda --profile paper --out /tmp/gpu_check    # <= 10 min, one GPU
#   bash benchmarks/gpu_check.sh --device cpu --profile tiny --out /tmp/gpu_check_cpu  # <= 3 min, 2 cores
#   bash benchmarks/gpu_check.sh --help                                                # every option
#
# Needs torch, torchvision, numpy, pandas, pillow and filelock (dgnet's own imports; no MLOps
# package). Python: $PYTHON, else the repository's .venv, else python3. dgnet is imported from this
# checkout (PYTHONPATH), so nothing needs installing on a torch-only GPU machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi

# Fail fast, naming what is missing, before any step starts (a GPU machine may lack pandas).
missing="$("$python" -c 'import importlib.util as u
print(*(p for m, p in [("torch", "torch"), ("torchvision", "torchvision"), ("numpy", "numpy"),
      ("pandas", "pandas"), ("PIL", "pillow"), ("filelock", "filelock")] if u.find_spec(m) is None))')" \
  || { echo "gpu_check: cannot run $python" >&2; exit 2; }
if [ -n "$missing" ]; then
  echo "gpu_check: $python lacks the Python package(s): $missing; install them (pip install $missing)" \
       "or set PYTHON to an interpreter that has them." >&2
  exit 2
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" "$here/gpu_check.py" "$@"
