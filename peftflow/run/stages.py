"""The stage table: every stage of the pipeline, once, as data.

The DAG expansion (task order, pools, the gate's place), the plan (argv, inputs, cache-key
config), the task runner (required outputs, reuse), `peftflow plan`, the run summary and the
loader's pool check all read this table; none of them names a stage by itself. Adding a stage
(say `export_gguf`) is one `register(StageDef(...))` plus its script and its domain code:
see docs/architecture.md.

The order is the run order: stages run one after the other, and the release gate runs before
the first stage marked `after_gate` (the release).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftflow.errors import ConfigError, IntegrityError
from peftflow.spec.model import GPU_POOL, Spec, Stage

if TYPE_CHECKING:
    from peftflow.run.runinfo import RunInfo
    from peftflow.store.status_record import FileRef
    from peftflow.train.training_profile import Profile

# The argv builders import run/inputs when they run: every DAG parse reads this table, and
# only a task builds a plan (the loader's import cost is what bench_parse measures).


@dataclass(frozen=True)
class StageContext:
    """What a stage's argv builder may read: never anything else of the task."""

    spec: Spec
    run: RunInfo
    profile: Profile
    upstream: Mapping[str, dict[str, Any] | None]  # stage name -> its XCom record
    extra: Mapping[str, Any]  # facts: gate_decision (XCom), baseline_metrics (registry)


@dataclass(frozen=True)
class StageArgs:
    """A stage's own part of its plan, after the common `--profile P --out DIR`."""

    argv: list[str] = field(default_factory=list)
    inputs: dict[str, FileRef] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # what else decides its result


@dataclass(frozen=True)
class StageDef:
    name: str  # task id, status.json `stage`, artifact folder
    script: str  # file name under the scripts folder (PEFTFLOW_SCRIPTS_DIR)
    outputs: tuple[str, ...]  # outputs status.json must list for the task to succeed
    args: Callable[[StageContext], StageArgs]
    # A GPU stage: the profile's runtime key that says how many GPUs it leases ("devices",
    # "eval_devices"); it runs in pool `gpu` and takes that many slots. None: no GPU.
    devices: str | None = None
    per_run: bool = False  # its cache key names the run: an earlier run never stands in
    after_gate: bool = False  # runs only after the release gate passed (reads its decision)
    reads_baseline: bool = False  # is handed the current release's metrics.json, if any

    @property
    def gpu(self) -> bool:
        return self.devices is not None

    @property
    def pool(self) -> str | None:
        return GPU_POOL if self.gpu else None

    def pool_slots(self, spec: Spec) -> int:
        """Pool slots of its task: the most devices any profile the spec allows asks for."""
        return spec.max_devices.get(self.devices, 1) if self.devices else 1


def _prepare(ctx: StageContext) -> StageArgs:
    from peftflow.run.inputs import effective_manifest_path, ref

    manifest = effective_manifest_path(ctx.spec, ctx.run)
    q = ctx.spec.gate.quality
    return StageArgs(
        argv=["--manifest", str(manifest),
              "--max-invalid-records", str(q.max_invalid_records),
              "--max-duplicate-fraction", repr(q.max_duplicate_fraction),
              "--max-over-ctx-fraction", repr(q.max_over_ctx_fraction),
              "--allow-warn" if q.allow_warn else "--no-allow-warn"],
        inputs={"manifest": ref("manifest", manifest)},
        config={"quality": q.__dict__})


def _train(ctx: StageContext) -> StageArgs:
    from peftflow.run.inputs import base_model, upstream_outputs

    data = upstream_outputs(ctx.upstream.get(Stage.PREPARE), Stage.PREPARE)
    prefix = str(Path(data["bin"].path).with_suffix(""))
    return StageArgs(argv=["--data-prefix", prefix, "--resume"],
                     inputs={"bin": data["bin"], "idx": data["idx"],
                             "base_model": base_model(ctx.profile)})


def _evaluate(ctx: StageContext) -> StageArgs:
    from peftflow.run.inputs import base_model, ref, upstream_outputs

    spec, gate = ctx.spec, ctx.spec.gate
    trained = upstream_outputs(ctx.upstream.get(Stage.TRAIN), Stage.TRAIN)
    inputs = {"adapter": trained["adapter"], "base_model": base_model(ctx.profile)}
    argv = ["--adapter", trained["adapter"].path]
    for i, suite_path in enumerate(spec.suite_paths):
        inputs[f"suite:{i}"] = ref(f"suite:{i}", suite_path)
        argv += ["--suite", str(suite_path)]
    argv += ["--min-domain-improvement", repr(gate.min_domain_improvement),
             "--max-retention-increase", repr(gate.max_retention_increase)]
    config: dict[str, Any] = {"gate": [gate.min_domain_improvement,
                                       gate.max_retention_increase]}
    baseline = ctx.extra.get("baseline_metrics")
    if gate.compare_to_release and baseline:
        inputs["baseline_metrics"] = ref("baseline_metrics", Path(baseline))
        argv += ["--baseline-metrics", str(baseline),
                 "--baseline-tolerance", repr(gate.release_tolerance)]
        config["release_tolerance"] = gate.release_tolerance
    return StageArgs(argv, inputs, config)


def _release(ctx: StageContext) -> StageArgs:
    from peftflow.run.inputs import ref, upstream_outputs

    dirs = {}
    for up in (Stage.PREPARE, Stage.TRAIN, Stage.EVALUATE):
        record = ctx.upstream.get(up) or {}
        upstream_outputs(record, up)  # raises when absent
        dirs[up] = str(Path(record["status_path"]).parent)
    gate_file = ctx.extra.get("gate_decision")
    if not gate_file:
        raise IntegrityError("no release gate decision in this run; the gate did not pass")
    run, spec = ctx.run, ctx.spec
    return StageArgs(
        argv=["--spec", str(spec.path), "--prepare-status", dirs[Stage.PREPARE],
              "--train-status", dirs[Stage.TRAIN], "--eval-status", dirs[Stage.EVALUATE],
              "--gate", str(gate_file), "--dag-id", run.dag_id, "--run-id", run.run_id,
              "--try-number", str(run.try_number)],
        inputs={"gate": ref("gate", Path(gate_file)), "spec": ref("spec", spec.path)},
        config={"run": [run.dag_id, run.run_id]})  # a release belongs to exactly one run


_TABLE: dict[str, StageDef] = {}


def register(definition: StageDef, *, after: str | None = None) -> None:
    """Add a stage, at the end or right after `after`; a name is registered once."""
    if definition.name in _TABLE:
        raise ConfigError(f"stage {definition.name!r} is already registered")
    if after is not None and after not in _TABLE:
        raise ConfigError(f"stage {definition.name!r}: no stage {after!r} to follow")
    items = list(_TABLE.items())
    at = len(items) if after is None else [n for n, _ in items].index(after) + 1
    items.insert(at, (definition.name, definition))
    _TABLE.clear()
    _TABLE.update(items)


def unregister(name: str) -> None:
    _TABLE.pop(name, None)


def all_stages() -> tuple[StageDef, ...]:
    return tuple(_TABLE.values())


def names() -> tuple[str, ...]:
    return tuple(_TABLE)


def get(name: str) -> StageDef:
    try:
        return _TABLE[str(name)]
    except KeyError:
        raise ConfigError(f"unknown stage {name!r}; the stages are {', '.join(_TABLE)}") from None


def before(name: str) -> tuple[StageDef, ...]:
    """The stages that run before `name` in a run (whose records it may read)."""
    order = names()
    return all_stages()[: order.index(str(name))]


def gpu_names() -> frozenset[str]:
    return frozenset(d.name for d in _TABLE.values() if d.gpu)


for _definition in (
    StageDef(Stage.PREPARE.value, "prepare_dataset.sh", ("bin", "idx", "quality"), _prepare),
    StageDef(Stage.TRAIN.value, "train_adapter.sh", ("adapter", "loss_data"), _train,
             devices="devices"),
    StageDef(Stage.EVALUATE.value, "evaluate_adapter.sh", ("metrics", "verdict"), _evaluate,
             devices="eval_devices", reads_baseline=True),
    StageDef(Stage.RELEASE.value, "release_adapter.sh", ("release_manifest",), _release,
             per_run=True, after_gate=True),
):
    register(_definition)
