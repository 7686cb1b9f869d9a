#!/usr/bin/env bash
# Sets up (or refreshes) the project's Airflow deployment. Idempotent: safe to rerun.
#
#   ./setup_airflow.sh                    venv + pinned install, AIRFLOW_HOME, DB, pool, DAGs
#   ./setup_airflow.sh --db URL           use PostgreSQL (postgresql+psycopg2://...) instead of SQLite
#   ./setup_airflow.sh --switch-profile P make P (airflow | mlops-lite) the active orchestration
#                                         profile, recorded in the audit trail
#   ./setup_airflow.sh --executor edge --db URL
#                                         the edge profile: GPU stages on Airflow Edge workers
#                                         (PostgreSQL required), CPU stages on this host
#   ./setup_airflow.sh start|stop|status  manage scheduler, dag-processor and api-server
#   ./setup_airflow.sh worker start --api-url URL [--gpus 0,1] [--hostname H]
#                                         join this host to an edge deployment as a worker
#                                         (also: worker stop|drain|resume|status)
#
# Environment: PEFTFLOW_AIRFLOW_HOME (default ./airflow_home), PEFTFLOW_DB_URL (same as --db),
# PEFTFLOW_PARALLELISM (default: cores, at most 4), PEFTFLOW_API_HOST/PORT (127.0.0.1:8080),
# PYTHON (interpreter for the venv, 3.11 or 3.12).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
export AIRFLOW_HOME="${PEFTFLOW_AIRFLOW_HOME:-$ROOT/airflow_home}"
DB_URL="${PEFTFLOW_DB_URL:-}"
SWITCH=""

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
  start|stop|status|restart)
    [ -x "$VENV/bin/peftflow" ] || die "run ./setup_airflow.sh first (no $VENV)"
    exec "$VENV/bin/peftflow" services "$@" ;;
  worker)
    [ -x "$VENV/bin/peftflow" ] || die "run ./setup_airflow.sh first (no $VENV): a worker host installs the same pinned project"
    shift; exec "$VENV/bin/peftflow" worker "$@" ;;
esac
EXECUTOR=""

while [ $# -gt 0 ]; do
  case "$1" in
    --db) [ $# -ge 2 ] || die "--db needs a URL"; DB_URL="$2"; shift 2 ;;
    --db=*) DB_URL="${1#--db=}"; shift ;;
    --executor) [ $# -ge 2 ] || die "--executor needs local or edge"; EXECUTOR="$2"; shift 2 ;;
    --executor=*) EXECUTOR="${1#--executor=}"; shift ;;
    --switch-profile) [ $# -ge 2 ] || die "--switch-profile needs airflow or mlops-lite"; SWITCH="$2"; shift 2 ;;
    --switch-profile=*) SWITCH="${1#--switch-profile=}"; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# 1. Virtual environment with the pinned project; reinstalled only when pyproject.toml,
#    setup.py or the C tokenizer's source changes (the install compiles it).
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)' \
    || die "$PY is not Python 3.11 or 3.12; set PYTHON=python3.11"
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.peftflow-install"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/peftflow/dataset/*.c | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  say "installing the pinned project into $VENV (first time: a few minutes)"
  PIPLOG="$VENV/pip-install.log"
  { "$VENV/bin/python" -m pip install --upgrade pip \
      && "$VENV/bin/python" -m pip install -e "$ROOT[test]"; } >"$PIPLOG" 2>&1 \
    || { tail -n 30 "$PIPLOG" >&2; die "pip install failed (full log: $PIPLOG)"; }
  echo "$WANT" > "$STAMP"
else
  say "pinned project already installed"
fi
PEFTFLOW="$VENV/bin/peftflow"
AIRFLOW="$VENV/bin/airflow"

# 2. The orchestration profile: only one may be the canonical execution path.
if [ -n "$SWITCH" ]; then
  "$PEFTFLOW" profile switch "$SWITCH"
fi
ACTIVE="$("$PEFTFLOW" profile show --quiet)"
if [ "$ACTIVE" != "airflow" ]; then
  die "the active orchestration profile is '$ACTIVE' (configs/orchestration.yaml), so the Airflow profile is not installed. Run './setup_airflow.sh --switch-profile airflow' to make Airflow the canonical path (recorded in the audit trail)."
fi

# 3. AIRFLOW_HOME with a generated airflow.cfg (regenerated only while it keeps our marker).
"$PEFTFLOW" services configure ${DB_URL:+--db "$DB_URL"} ${EXECUTOR:+--executor "$EXECUTOR"}
"$PEFTFLOW" audit init-key  # HMAC key of the audit trail (0600), kept if present

# 4. Metadata DB, the gpu pool, the tiny smoke model, the specs, the DAGs.
export AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY=False DO_NOT_TRACK=1
say "migrating the metadata DB"
# Logs under AIRFLOW_HOME are private (0600, doctor checks it): create them under umask 077.
( umask 077; "$AIRFLOW" db migrate >"$AIRFLOW_HOME/logs/db-migrate.log" 2>&1 ) \
  || { tail -n 20 "$AIRFLOW_HOME/logs/db-migrate.log" >&2; die "airflow db migrate failed (log: $AIRFLOW_HOME/logs/db-migrate.log)"; }
# Pool gpu: one slot per device of configs/devices.yaml, resized here on every run.
POOL_MSG="$("$PEFTFLOW" devices sync-pool)" \
  || die "could not size pool gpu from configs/devices.yaml (the error above says why)"
say "$POOL_MSG"
"$PEFTFLOW" model init-tiny --profile "$ROOT/configs/profiles/smoke_cpu.yaml" >/dev/null
say "validating dag_specs/"
"$PEFTFLOW" validate "$ROOT/dag_specs" || die "fix the spec problems above, then rerun"
say "registering the DAGs"
( umask 077; "$AIRFLOW" dags reserialize >"$AIRFLOW_HOME/logs/reserialize.log" 2>&1 ) \
  || { tail -n 20 "$AIRFLOW_HOME/logs/reserialize.log" >&2; die "airflow dags reserialize failed"; }
"$PEFTFLOW" services pause-policy
"$PEFTFLOW" doctor --airflow

cat <<NEXT
[setup] done. Next steps:
  export AIRFLOW_HOME="$AIRFLOW_HOME"
  ./setup_airflow.sh start            # scheduler, dag-processor, api-server (127.0.0.1)
  $AIRFLOW dags list                  # one DAG per spec
  make smoke                          # the smoke pipeline end to end
NEXT
