#!/usr/bin/env bash
# Stage release_adapter: publish a gated adapter into releases/<profile>/<version>/.
# All logic lives in peftflow.stages.release; see `scripts/release_adapter.sh --help`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEFTFLOW_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PY" ]]; then PY="$(command -v python3)"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m peftflow.stages.release "$@"
