#!/usr/bin/env bash
# The integration suite of the README's "Scaling out" recipes, for real on 127.0.0.1: a private
# PostgreSQL cluster, `mlflow server` on it, an Optuna study shared by two `dgnet tune` workers
# started together on a new database, of which one is killed mid-trial (its trial must be re-run,
# its MLflow run neither lost nor doubled), a tracking server that goes away mid-training.
# Everything it starts, it stops.
#
# Needs: the README's setup plus the `scale` extra (installed here), and PostgreSQL's server binaries
# (Debian package `postgresql`; installed with apt-get when missing and run as root, otherwise the
# suite is skipped with the reason). About 5 minutes on 2 cores. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[dev,scale]'
export DGNET_INTEGRATION=1 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
base="$(mktemp -d "${TMPDIR:-/tmp}/dgnet-integration-XXXXXX")"
status=0
pytest -s -v -p no:cacheprovider --basetemp "$base" tests/integration "$@" || status=$?
if [ "$status" -eq 0 ]; then rm -rf "$base"; else echo "logs and workspaces kept in $base" >&2; fi
exit "$status"
