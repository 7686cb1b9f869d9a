#!/usr/bin/env bash
# evaluate_adapter: score base vs adapted model on eval suites; metrics.json + verdict.json.
# All logic is in peftflow/stages/evaluate.py; see `scripts/evaluate_adapter.sh --help`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEFTFLOW_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PY" ]]; then PY="$(command -v python3)"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m peftflow.stages.evaluate "$@"
