"""Operator overhead: StageOperator vs a plain BashOperator running the same stage script.

Both run scripts/prepare_dataset.sh on the smoke dataset with the same arguments, inside
Airflow (dag.test, logical_date=None), alternately, N times each, in one process. The
StageOperator also validates the spec, hashes inputs, checks the cache (bypassed here with
force_rerun, so it really runs), verifies every output and writes audit events. Prints the
median task durations, the absolute overhead per task and the ratio.
Target: overhead <= max(10 %, 0.5 s). Usage: python bench/bench_operator.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DAG_FILE = textwrap.dedent('''
    """Benchmark DAGs (airflow): the same stage under StageOperator and BashOperator."""
    import pendulum
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG, Param

    from operators.stage import StageOperator

    ROOT = "{root}"
    START = pendulum.datetime(2026, 1, 1, tz="UTC")
    with DAG("bench_stage", schedule=None, start_date=START,
             params={{"force_rerun": Param(True, type="boolean")}}):
        StageOperator(task_id="prepare_dataset", stage="prepare_dataset",
                      spec_file=ROOT + "/dag_specs/rwkv7_smoke_cpu.yaml")
    with DAG("bench_bash", schedule=None, start_date=START):
        BashOperator(
            task_id="prepare_dataset",
            bash_command="bash $ROOT/scripts/prepare_dataset.sh --profile "
            "$ROOT/configs/profiles/smoke_cpu.yaml --out $OUT/{{{{ run_id }}}} --manifest "
            "$ROOT/data/smoke/pydoc-docs/v1/train.manifest.json --max-invalid-records 0 "
            "--max-duplicate-fraction 0.05 --max-over-ctx-fraction 0.95 --allow-warn",
            env={{"ROOT": ROOT, "OUT": "{out}"}}, append_env=True)
''')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    (tmp / "dags").mkdir()
    (tmp / "dags" / "bench_dags.py").write_text(DAG_FILE.format(root=ROOT, out=tmp / "bash"))
    os.environ.update({
        "AIRFLOW_HOME": str(tmp / "airflow_home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False", "DO_NOT_TRACK": "1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "PEFTFLOW_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "PEFTFLOW_DEVICE_LOCK_DIR": str(tmp / "device-locks"),
        "PEFTFLOW_AUDIT_LOG": str(tmp / "audit" / "audit.jsonl"),  # the key stays outside
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([{
            "name": "bench", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(tmp / "dags"), "refresh_interval": 0}}]),
    })
    import logging

    logging.disable(logging.CRITICAL)
    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.utils import db

    db.initdb()
    bag = BundleDagBag(str(tmp / "dags"), bundle_path=str(tmp / "dags"), bundle_name="bench")
    assert not bag.import_errors, bag.import_errors
    durations: dict[str, list[float]] = {"bench_stage": [], "bench_bash": []}
    for _ in range(args.runs + 1):  # the first round warms caches and is dropped
        for dag_id in durations:
            run = bag.dags[dag_id].test(logical_date=None)
            (ti,) = run.get_task_instances()
            assert str(ti.state) == "success", (dag_id, ti.state)
            durations[dag_id].append((ti.end_date - ti.start_date).total_seconds())
    stage = statistics.median(durations["bench_stage"][1:])
    bash = statistics.median(durations["bench_bash"][1:])
    overhead = stage - bash
    limit = max(0.10 * bash, 0.5)
    print(f"prepare_dataset task, median of {args.runs} runs each (dag.test, same process)")
    print(f"  BashOperator   {bash:7.3f} s")
    print(f"  StageOperator  {stage:7.3f} s")
    print(f"  overhead       {overhead:+7.3f} s per task, ratio {stage / bash:.3f}")
    print(f"  target         <= {limit:.3f} s (max of 10 % and 0.5 s): "
          f"{'met' if overhead <= limit else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
