#!/usr/bin/env bash
# train_adapter stage: train an RWKV adapter (RWKV-PEFT on a GPU, or the CPU reference trainer).
# Usage: scripts/train_adapter.sh --profile P --data-prefix PREFIX --out DIR [--resume] [--print-command]
# Exit codes: see peftflow/stages/train.py (2 config, 3 missing input, 75 resource, 130 interrupted).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEFTFLOW_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PY" ]]; then PY="$(command -v python3)"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m peftflow.stages.train "$@"
