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
Ctrl-C stops both. Training runs and sweeps started from the page run in processes of their own: they keep
going after Ctrl-C and show up again the next time the dashboard starts (stop them with their Stop button).

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

# Check every port before starting anything: a busy one is one line and exit code 2.
port_problem() {  # prints why HOST:PORT cannot be listened on, nothing when it can
  "$PY" - "$1" "$2" <<'PYCODE'
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
except socket.gaierror as error:
    print(f"cannot use host '{host}': {error.strerror}")
    sys.exit()
with socket.socket(family, kind, proto) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(address)
    except OSError as error:
        print("in use" if error.errno == errno.EADDRINUSE else f"cannot listen there: {error.strerror}")
PYCODE
}
check_port() {  # label option port
  local problem
  problem="$(port_problem "$HOST" "$3")"
  if [ "$problem" = "in use" ]; then
    die "port $3 ($1) is already in use on $HOST; choose another with $2"
  elif [ -n "$problem" ]; then
    die "port $3 ($1) on $HOST: $problem"
  fi
}
if [ "$START_MLFLOW" = 1 ]; then check_port "MLflow UI" --mlflow-port "$MLFLOW_PORT"; fi
check_port "launcher" --port "$PORT"

# A new SQLite store is created here, once: two servers creating it at the same time crash in its migrations.
case "$STORE" in
  sqlite:///*)
    DB_FILE="${STORE#sqlite:///}"
    DB_FILE="${DB_FILE%%\?*}"
    if [ ! -e "$DB_FILE" ]; then
      "$PY" -c 'import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments(max_results=1)' \
        "$STORE" >/dev/null 2>&1 || die "cannot create the MLflow store $STORE"
    fi ;;
esac

case "$HOST" in
  127.0.0.1|localhost|::1) LINK_HOST="$HOST" ;;
  0.0.0.0|::) LINK_HOST=127.0.0.1; echo "WARNING: listening on all addresses ($HOST): see --help before going on." >&2 ;;
  *) LINK_HOST="$HOST"; echo "WARNING: listening on $HOST: see --help before going on." >&2 ;;
esac
[ "$LINK_HOST" = "::1" ] && LINK_HOST="[::1]"
if [ "$START_MLFLOW" = 1 ]; then MLFLOW_URL="http://$LINK_HOST:$MLFLOW_PORT"; else MLFLOW_URL="$STORE"; fi

# Each server in a process group of its own (job control), so that stopping it stops all its workers.
set -m
GROUPS_STARTED=()
SLEEPER=""
stopping=0
cleanup() {
  [ "$stopping" = 1 ] && return
  stopping=1
  trap - INT TERM HUP
  [ -n "$SLEEPER" ] && kill "$SLEEPER" 2>/dev/null
  local pid alive i
  for pid in "${GROUPS_STARTED[@]+"${GROUPS_STARTED[@]}"}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  for i in $(seq 1 50); do  # up to 10 s for a clean exit, then SIGKILL
    alive=0
    for pid in "${GROUPS_STARTED[@]+"${GROUPS_STARTED[@]}"}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${GROUPS_STARTED[@]+"${GROUPS_STARTED[@]}"}"; do kill -KILL -- "-$pid" 2>/dev/null; done
  wait 2>/dev/null
}
on_signal() {
  echo "stopping the MLflow UI and the launcher (training runs started from the page keep going)" >&2
  cleanup
  exit 130
}
trap on_signal INT TERM HUP
trap cleanup EXIT

ALLOWED=()
[ -n "$ALLOWED_HOSTS" ] && ALLOWED=(--allowed-hosts "$ALLOWED_HOSTS")
if [ "$START_MLFLOW" = 1 ]; then
  ARTIFACTS=()
  # New experiments made in the UI keep their artifacts on disk beside the store, as the trainer's do, so the
  # trainer (which writes straight to the store) can log into them.
  case "$STORE" in sqlite:*) ARTIFACTS=(--default-artifact-root "$PWD/mlruns") ;; esac
  "$PY" -m mlflow ui --backend-store-uri "$STORE" --host "$HOST" --port "$MLFLOW_PORT" \
    --workers "$MLFLOW_WORKERS" "${ARTIFACTS[@]+"${ARTIFACTS[@]}"}" "${ALLOWED[@]+"${ALLOWED[@]}"}" \
    "${MLFLOW_EXTRA[@]+"${MLFLOW_EXTRA[@]}"}" &
  GROUPS_STARTED+=($!)
fi
"$PY" -m pipeline.dashboard --host "$HOST" --port "$PORT" --mlflow-url "$MLFLOW_URL" "${ALLOWED[@]+"${ALLOWED[@]}"}" &
GROUPS_STARTED+=($!)
set +m  # job control only for starting the servers: no job notices on stderr, the sleeps below stay ours

if [ "$START_MLFLOW" = 1 ]; then
  echo "MLflow UI: $MLFLOW_URL/   launcher: http://$LINK_HOST:$PORT/   store: $STORE"
  echo "Ctrl-C stops both."
else
  echo "launcher: http://$LINK_HOST:$PORT/   store: the MLflow server at $STORE (its UI is there; not started here)"
  echo "Ctrl-C stops the launcher."
fi

# Wait; if either server ends on its own, stop the other and pass its exit code on.
while :; do
  for pid in "${GROUPS_STARTED[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"
      code=$?
      echo "error: a server stopped (exit code $code); stopping the other" >&2
      cleanup
      exit $(( code == 0 ? 1 : code ))
    fi
  done
  sleep 1 &
  SLEEPER=$!
  wait "$SLEEPER" 2>/dev/null
  SLEEPER=""
done
