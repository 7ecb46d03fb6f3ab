#!/usr/bin/env bash
# A shared MLflow tracking server for a team: PostgreSQL for runs, a shared folder (or S3) for artifacts.
#
#   ./run-tracking-server.sh                                   # 127.0.0.1:5000, PostgreSQL on localhost
#   ./run-tracking-server.sh --backend-store-uri sqlite:///srv.db --artifacts-destination /shared/mlartifacts
#   ./run-tracking-server.sh --expose --allowed-hosts mlflow.example.org   # reachable by others, with login
#
# Then everyone trains against it:  export MLFLOW_TRACKING_URI=http://HOST:5000
set -euo pipefail
cd "$(dirname "$0")"

host=127.0.0.1
port=5000
backend="${MLFLOW_BACKEND_STORE_URI:-postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$PWD/mlartifacts}"
expose=false
extra=()

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'TXT'
Options:
  --port N                    port (default 5000)
  --backend-store-uri URI     where runs live (default $MLFLOW_BACKEND_STORE_URI or postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow)
  --artifacts-destination D   a shared folder or s3://bucket/path (default ./mlartifacts)
  --expose                    bind 0.0.0.0 and switch on MLflow's basic-auth login (app-name basic-auth);
                              pair it with --allowed-hosts and --cors-allowed-origins, and put TLS in front
  --allowed-hosts, --cors-allowed-origins ...   passed to `mlflow server` unchanged
TXT
}

while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --backend-store-uri) backend="$2"; shift 2 ;;
    --artifacts-destination) artifacts="$2"; shift 2 ;;
    --expose) expose=true; shift ;;
    --allowed-hosts|--cors-allowed-origins) extra+=("$1" "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if $expose; then
  host=0.0.0.0
  extra+=(--app-name basic-auth)
  echo "warning: listening on all interfaces with MLflow's basic-auth login; change the admin password first" >&2
fi
mlflow_cli=mlflow
[ -x .venv/bin/mlflow ] && mlflow_cli=.venv/bin/mlflow
exec "$mlflow_cli" server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
  --host "$host" --port "$port" "${extra[@]}"
