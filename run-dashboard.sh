#!/usr/bin/env bash
# The MLflow UI and the launcher page on this project's tracking store; Ctrl-C stops both.
# ./run-dashboard.sh --help explains the options.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOST=127.0.0.1
PORT=5173
MLFLOW_PORT=5000
MLFLOW_WORKERS=1
ALLOWED_HOSTS=""
MLFLOW_EXTRA=()

usage() {
  cat <<'EOF'
Usage: ./run-dashboard.sh [OPTIONS] [-- MLFLOW_UI_OPTIONS...]

Start the MLflow UI (http://127.0.0.1:5000) and the launcher page (http://127.0.0.1:5173) on the tracking
store the trainer uses: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db (run it from the project folder).
Ctrl-C stops both; so does anything that ends this script, kill -9 included. Training runs and sweeps started
from the page run in processes of their own: they keep going after Ctrl-C and show up again the next time the
dashboard starts (stop them with their Stop button).

Options:
  --host HOST            Address both servers listen on (default 127.0.0.1: this machine only).
  --port PORT            Port of the launcher page (default 5173).
  --mlflow-port PORT     Port of the MLflow UI (default 5000).
  --mlflow-workers N     Worker processes of the MLflow UI (default 1; MLflow's own default is 4).
  --allowed-hosts LIST   Comma-separated host names the pages may be reached by besides localhost
                         (passed to both servers: MLflow's guard against DNS rebinding, and the launcher's).
  -h, --help             Show this and exit.
  -- ARGS...             Everything after -- goes to `mlflow ui` as it is, e.g.
                         -- --cors-allowed-origins https://lab.example.org --app-name basic-auth

WARNING: --host 0.0.0.0 (or any address other than 127.0.0.1) lets everyone who can reach this machine use
both pages. The launcher starts processes on this machine and has no login; the MLflow UI has none either
unless you start it with MLflow's basic auth (-- --app-name basic-auth: needs pip install -e '.[server]',
MLFLOW_FLASK_SERVER_SECRET_KEY, and MLFLOW_AUTH_ADMIN_PASSWORD on the first start). Prefer an SSH tunnel
(ssh -L 5173:127.0.0.1:5173 -L 5000:127.0.0.1:5000 HOST). If you must listen on the network, also set
--allowed-hosts (and MLflow's --cors-allowed-origins after --) and keep a firewall in front of both ports.

A port already in use stops the script before it starts anything: one line on stderr, exit code 2.
MLflow's server job runner (GenAI scorers, trace archival; not used here) is off unless
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true is set.
EOF
}

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --host|--port|--mlflow-port|--mlflow-workers|--allowed-hosts)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      case "$1" in
        --host) HOST="$2" ;;
        --port) PORT="$2" ;;
        --mlflow-port) MLFLOW_PORT="$2" ;;
        --mlflow-workers) MLFLOW_WORKERS="$2" ;;
        --allowed-hosts) ALLOWED_HOSTS="$2" ;;
      esac
      shift 2 ;;
    --host=*) HOST="${1#*=}"; shift ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --mlflow-port=*) MLFLOW_PORT="${1#*=}"; shift ;;
    --mlflow-workers=*) MLFLOW_WORKERS="${1#*=}"; shift ;;
    --allowed-hosts=*) ALLOWED_HOSTS="${1#*=}"; shift ;;
    --) shift; MLFLOW_EXTRA=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

for pair in "--port:$PORT" "--mlflow-port:$MLFLOW_PORT"; do
  value="${pair#*:}"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "$value" -lt 1 ] || [ "$value" -gt 65535 ]; then
    die "${pair%%:*} must be a port number from 1 to 65535, got '$value'"
  fi
done
[[ "$MLFLOW_WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--mlflow-workers must be a whole number of at least 1, got '$MLFLOW_WORKERS'"

if [ -x "$ROOT/.venv/bin/python" ]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3)" || die "python3 not found (create the project's .venv first, see README.md)"
fi

STORE="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"
export MLFLOW_TRACKING_URI="$STORE"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
# MLflow's server-side job runner (GenAI scorers, trace archival) starts seven more Python processes; nothing
# here uses it. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment turns it back on.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# A store served by an MLflow server (http://...) already has its UI: start only the launcher, linked to it.
START_MLFLOW=1
case "$STORE" in http://*|https://*) START_MLFLOW=0 ;; esac
if [ "$START_MLFLOW" = 1 ] && [ "$PORT" = "$MLFLOW_PORT" ]; then
  die "--port and --mlflow-port must differ, both are $PORT"
fi

ARTIFACTS=()
# New experiments made in the UI keep their artifacts on disk beside the store, as the trainer's do, so the
# trainer (which writes straight to the store) can log into them.
case "$STORE" in sqlite:*) ARTIFACTS=(--artifacts-root "$PWD/mlruns") ;; esac
[ "$START_MLFLOW" = 1 ] || MLFLOW_PORT=0

# The rest is pipeline/dashboard/servers.py, in this very process (so its PID is the one to signal): it checks
# both ports, then keeps each server under a keeper that ends it when this process ends, even by SIGKILL.
exec "$PY" -m pipeline.dashboard.servers --host "$HOST" --port "$PORT" --mlflow-port "$MLFLOW_PORT" \
  --mlflow-workers "$MLFLOW_WORKERS" --allowed-hosts "$ALLOWED_HOSTS" --store "$STORE" \
  "${ARTIFACTS[@]+"${ARTIFACTS[@]}"}" -- "${MLFLOW_EXTRA[@]+"${MLFLOW_EXTRA[@]}"}"
