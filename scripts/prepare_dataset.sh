#!/usr/bin/env bash
# prepare_dataset: registered JSONL version -> RWKV binidx + quality.json + status.json.
# Usage: scripts/prepare_dataset.sh --manifest M --out DIR [--profile P] [options]; --help lists them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEFTFLOW_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PY" ]]; then PY="$(command -v python3)"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m peftflow.stages.prepare "$@"
