#!/usr/bin/env bash
# A shared MLflow tracking server for a team: PostgreSQL for runs, a shared folder (or S3) for artifacts.
#
#   ./run-tracking-server.sh                                   # 127.0.0.1:5000, PostgreSQL on localhost
#   ./run-tracking-server.sh --backend-store-uri sqlite:///srv.db --artifacts-destination /shared/mlartifacts
#   ./run-tracking-server.sh --expose --allowed-hosts mlflow.example.org   # reachable by others, with login
#
# Then everyone trains against it:  export MLFLOW_TRACKING_URI=http://HOST:5000
# Runs on the bash macOS ships (3.2), where `set -u` takes the expansion of an empty array for an unbound variable.
set -euo pipefail
cd "$(dirname "$0")"

host=""
port=5000
backend="${MLFLOW_BACKEND_STORE_URI:-postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$PWD/mlartifacts}"
expose=false
extra=()

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'TXT'

Options:
  --port N                    port (default 5000)
  --host ADDRESS              address to listen on (default 127.0.0.1; 0.0.0.0 with --expose)
  --backend-store-uri URI     where runs live (default $MLFLOW_BACKEND_STORE_URI or postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow);
                              postgresql:// is read with psycopg2, the driver of the server extra
  --artifacts-destination D   a shared folder or s3://bucket/path (default ./mlartifacts)
  --expose                    listen on all interfaces (or --host) with MLflow's basic-auth login (app-name basic-auth;
                              needs `pip install -e '.[server]'`); pair it with --allowed-hosts and
                              --cors-allowed-origins, and put TLS in front
  --allowed-hosts, --cors-allowed-origins, --workers ...   passed to `mlflow server` unchanged

With --expose, MLflow ships no admin password: the first start creates the user `admin` with the password in
$MLFLOW_AUTH_ADMIN_PASSWORD (12 characters or more). Users live in basic_auth.db in this folder unless
$MLFLOW_AUTH_CONFIG_PATH names another basic_auth.ini. Set $MLFLOW_FLASK_SERVER_SECRET_KEY when several servers
share the store; otherwise each start makes one up.
TXT
}

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --port|--host|--backend-store-uri|--artifacts-destination|--allowed-hosts|--cors-allowed-origins|--workers)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      case "$1" in
        --port) port="$2" ;;
        --host) host="$2" ;;
        --backend-store-uri) backend="$2" ;;
        --artifacts-destination) artifacts="$2" ;;
        *) extra+=("$1" "$2") ;;
      esac
      shift 2 ;;
    --expose) expose=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

if $expose; then
  host="${host:-0.0.0.0}"
  extra+=(--app-name basic-auth)
  # The login form's CSRF protection needs a key every worker shares.
  if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    export MLFLOW_FLASK_SERVER_SECRET_KEY
  fi
  echo "warning: listening on $host with MLflow's basic-auth login; keep the admin password secret" >&2
fi
# SQLAlchemy 2.1 reads a bare postgresql:// with psycopg 3, which the server extra does not install: name psycopg2.
case "$backend" in
  postgresql://*) backend="postgresql+psycopg2://${backend#postgresql://}" ;;
  postgres://*) backend="postgresql+psycopg2://${backend#postgres://}" ;;
esac
# MLflow's server-side job runner (GenAI scorers, trace archival) starts seven more Python processes that the lab
# never uses; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true in the environment turns it back on.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
mlflow_cli=mlflow
[ -x .venv/bin/mlflow ] && mlflow_cli=.venv/bin/mlflow
# Guarded so that an empty extra expands to nothing, also under bash 3.2 with set -u
exec "$mlflow_cli" server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
  --host "${host:-127.0.0.1}" --port "$port" ${extra[@]+"${extra[@]}"}
