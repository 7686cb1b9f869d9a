"""DAG parsing cost: peftflow's loader (specs -> validation -> dag-factory) against
hand-written Python DAG files with the same tasks, at 1, 10 and 100 DAGs, in one run.

Each measurement is a fresh interpreter (as the dag-processor's parse is), which first
imports Airflow (not counted), then fills a DagBag from the folder. Prints the median of
REPEATS runs per case and the ratio. Usage: python bench/bench_parse.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1, 10, 100)

HAND_WRITTEN = '''"""Hand-written DAG {i}: the same tasks, pools, retries and params as a generated one."""
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from operators.gate import ReleaseGateOperator
from operators.stage import StageOperator

SPEC = "{spec}"
with DAG(
    dag_id="hand_{i:03d}",
    description="Hand-written twin of a generated DAG.",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["peftflow", "smoke"],
    default_args={{"owner": "ml-platform", "depends_on_past": False}},
    params={{
        "note": Param("", description="note", type="string", maxLength=500),
        "training_profile": Param("configs/profiles/smoke_cpu.yaml", description="profile",
                                  type="string", enum=["configs/profiles/smoke_cpu.yaml"]),
        "dataset_manifest": Param("data/smoke/pydoc-docs/v1/train.manifest.json",
                                  description="manifest", type="string",
                                  enum=["data/smoke/pydoc-docs/v1/train.manifest.json"]),
    }},
) as dag:
    retry = dict(retries=1, retry_delay=timedelta(seconds=2), max_retry_delay=timedelta(seconds=3600))
    prepare = StageOperator(task_id="prepare_dataset", stage="prepare_dataset", spec_file=SPEC, **retry)
    train = StageOperator(task_id="train_adapter", stage="train_adapter", spec_file=SPEC, pool="gpu",
                          retries=2, retry_delay=timedelta(seconds=2), retry_exponential_backoff=2.0,
                          max_retry_delay=timedelta(seconds=30))
    evaluate = StageOperator(task_id="evaluate_adapter", stage="evaluate_adapter", spec_file=SPEC,
                             pool="gpu", **retry)
    gate = ReleaseGateOperator(task_id="release_gate", spec_file=SPEC, retries=0)
    release = StageOperator(task_id="release_adapter", stage="release_adapter", spec_file=SPEC, **retry)
    prepare >> train >> evaluate >> gate >> release
'''

MEASURE = r'''
import sys, time, warnings, logging
warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)
import airflow  # noqa: F401  (the fixed ~1 s import is not what we compare)
from airflow.sdk import DAG  # noqa: F401
from airflow.dag_processing.dagbag import BundleDagBag
folder = sys.argv[1]
t0 = time.perf_counter()
bag = BundleDagBag(folder, bundle_path=folder, bundle_name="bench")
elapsed = time.perf_counter() - t0
assert not bag.import_errors, bag.import_errors
print("RESULT", len(bag.dags), elapsed)
'''


def make_generated(base: Path, n: int) -> Path:
    dags, specs = base / "dags", base / "dag_specs"
    dags.mkdir(parents=True)
    specs.mkdir()
    shutil.copy(ROOT / "dags" / "peftflow_dags.py", dags)
    template = (ROOT / "dag_specs" / "rwkv7_smoke_cpu.yaml").read_text()
    for i in range(n):
        (specs / f"gen_{i:03d}.yaml").write_text(
            template.replace("dag_id: rwkv7_smoke_cpu", f"dag_id: gen_{i:03d}"))
    return dags


def make_hand_written(base: Path, n: int) -> Path:
    dags = base / "dags"
    dags.mkdir(parents=True)
    spec = ROOT / "dag_specs" / "rwkv7_smoke_cpu.yaml"
    for i in range(n):
        (dags / f"hand_{i:03d}.py").write_text(HAND_WRITTEN.format(i=i, spec=spec))
    return dags


def measure(folder: Path, expected: int, repeats: int, cold: bool = False) -> float:
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "DO_NOT_TRACK": "1",
           "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False", "PYTHONWARNINGS": "ignore"}
    times = []
    cache = Path(os.environ["AIRFLOW_HOME"]) / "peftflow-spec-cache.json"
    for _ in range(repeats):
        if cold:
            cache.unlink(missing_ok=True)
        out = subprocess.run([sys.executable, "-c", MEASURE, str(folder)], env=env, check=True,
                             capture_output=True, text=True).stdout
        result = next(line.split() for line in out.splitlines() if line.startswith("RESULT"))
        assert int(result[1]) == expected, result
        times.append(float(result[2]))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-parse-") as tmp:
        os.environ["AIRFLOW_HOME"] = str(Path(tmp) / "airflow_home")
        for n in SIZES:
            hand = measure(make_hand_written(Path(tmp) / f"hand{n}", n), n, args.repeats)
            folder = make_generated(Path(tmp) / f"gen{n}", n)
            cold = measure(folder, n, args.repeats, cold=True)
            warm = measure(folder, n, args.repeats)
            rows.append({"dags": n, "hand_written_ms": round(hand * 1000, 1),
                         "peftflow_cold_ms": round(cold * 1000, 1),
                         "peftflow_warm_ms": round(warm * 1000, 1),
                         "ratio_cold": round(cold / hand, 2), "ratio_warm": round(warm / hand, 2)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'DAGs':>5} {'hand-written ms':>16} {'peftflow cold ms':>17} "
              f"{'peftflow warm ms':>17} {'ratio cold':>11} {'ratio warm':>11}")
        for r in rows:
            print(f"{r['dags']:>5} {r['hand_written_ms']:>16} {r['peftflow_cold_ms']:>17} "
                  f"{r['peftflow_warm_ms']:>17} {r['ratio_cold']:>11} {r['ratio_warm']:>11}")
        print(f"median of {args.repeats} fresh processes each. cold = spec cache emptied before "
              "every parse (first parse after a change); warm = the dag-processor's steady state "
              "(specs unchanged). Target: warm ratio <= 1.5 at 100 DAGs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
