"""Spec validation: JSON Schema, then the checks a schema cannot express, reported together.

Every problem is reported as FILE:LINE:COL: $.yaml.path: message, with the fix where known.
Runtime resources that only exist on the training machine (base-model weights, the
RWKV-PEFT checkout) are not checked here but by `peftflow doctor` and at task start, so GPU
specs validate on any machine.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftflow import settings
from peftflow.errors import PeftflowError, Problem, SpecError
from peftflow.spec import cron as cron_rules
from peftflow.spec import inventory as inventory_mod
from peftflow.spec import model as spec
from peftflow.spec import orchestration
from peftflow.spec.cache import SpecCache
from peftflow.store import schemas, yamlmarks
from peftflow.store.hashing import sha256_bytes
from peftflow.store.paths import (  # the path rules every reader shares
    _is_control,
    display_path,
    inside_allowed_roots,
    resolve_ref,
)

if TYPE_CHECKING:
    from peftflow.train import training_profile as profile

SPEC_SUFFIXES = (".yaml", ".yml")
FREE_TEXT = frozenset({"$.description"})  # may span lines
RESERVED_PREFIXES = ("invalid_spec__",)  # the loader's placeholder DAGs
RESERVED_IDS = frozenset({"peftflow_not_loaded"})
MAX_PROBLEMS = 50  # per file
# Building one DAG costs about 25 ms here (200 specs: 5-6 s), and Airflow drops every DAG of
# the file past its 30 s import timeout: 300 specs stay well inside it on a 2-core box.
MAX_SPEC_FILES = 300


@dataclass
class _Context:
    """Caches what several specs reference, for one validation pass."""

    profiles: dict[Path, profile.Profile | SpecError] = field(default_factory=dict)
    suites: dict[Path, str | SpecError] = field(default_factory=dict)
    manifests: dict[Path, dict[str, Any] | SpecError | str] = field(default_factory=dict)
    active: orchestration.OrchestrationProfile | None = None
    _inventory: inventory_mod.Inventory | Exception | None = None

    @property
    def inventory(self) -> inventory_mod.Inventory | Exception:
        """The host's GPU inventory, read once per pass and only when a spec is validated
        (a cached spec needs none: its inventory file is one of the cache's dependencies)."""
        if self._inventory is None:
            self._inventory = _inventory()
        return self._inventory


class _Checker:
    def __init__(self, marked: yamlmarks.Marked, file: str, ctx: _Context) -> None:
        self.marked, self.file, self.ctx = marked, file, ctx
        self.data: dict[str, Any] = marked.data
        self.problems: list[Problem] = []
        self.deps: set[Path] = set()  # files whose change can change the verdict
        self.profiles: list[tuple[str, profile.Profile]] = []  # (YAML path, loaded profile)

    def add(self, path: str, message: str) -> None:
        line, col = self.marked.locate(path)
        self.problems.append(Problem(self.file, line, col, path, message))

    def ref(self, path: str, value: str, what: str, fix: str) -> Path | None:
        resolved = resolve_ref(value)
        self.deps.add(resolved)
        if not inside_allowed_roots(resolved):
            roots = ", ".join(str(r) for r in settings.get().allowed_roots)
            self.add(path, f"{value!r} resolves to {resolved}, outside the allowed roots "
                     f"({roots}); keep {what} inside the project or add its folder to "
                     "PEFTFLOW_ALLOWED_ROOTS")
            return None
        if not resolved.is_file():
            self.add(path, f"{what} {value!r} not found ({resolved}); {fix}")
            return None
        return resolved

    def run(self, lenient: bool = False) -> None:
        """Every check; `lenient` (the document broke its schema) skips a check that meets a
        missing or mistyped value, so the user still sees all the other problems at once."""

        def step(check: Any, *args: Any) -> Any:
            if not lenient:
                return check(*args)
            try:
                return check(*args)
            except (KeyError, TypeError, AttributeError, IndexError, ValueError):
                return None  # that part is already reported by the schema

        step(self._text)
        step(self._reserved_id)
        prof = step(self._training_profile)
        manifest = step(self._dataset_manifest)
        step(self._suites)
        step(self._trigger_refs)
        step(self._schedule)
        step(self._retries)
        step(self._consistency, prof, manifest)
        step(self._devices)
        step(self._queues)
        step(self._notify)
        step(self._orchestration)

    def _text(self) -> None:
        """No control characters in any value: JSON-Schema patterns end in `$`, which Python
        matches before a trailing newline, so `dag_id: "x\n"` would pass them; a newline or
        an escape code in a value could also forge log lines. Free text may hold \n and \t."""
        stack: list[tuple[str, Any]] = [("$", self.data)]
        while stack:
            path, value = stack.pop()
            if isinstance(value, dict):
                stack.extend((yamlmarks.child_path(path, k), v) for k, v in value.items())
            elif isinstance(value, list):
                stack.extend((yamlmarks.child_path(path, i), v) for i, v in enumerate(value))
            elif isinstance(value, str):
                allowed = "\n\t" if path in FREE_TEXT else ""
                bad = next((c for c in value if _is_control(c) and c not in allowed), None)
                if bad is not None:
                    self.add(path, f"contains the control character U+{ord(bad):04X} "
                             f"({bad!r}); remove it (a trailing newline comes from a YAML "
                             "'|' block or a quoted \"\\n\")")

    def _reserved_id(self) -> None:
        dag_id = self.data["dag_id"]
        if isinstance(dag_id, str) and (dag_id.startswith(RESERVED_PREFIXES)
                                        or dag_id in RESERVED_IDS):
            self.add("$.dag_id", f"{dag_id!r} is reserved for peftflow's own placeholder DAGs "
                     "(invalid_spec__*, peftflow_not_loaded); choose another dag_id")

    def _training_profile(self) -> profile.Profile | None:
        resolved = self.ref("$.training_profile", self.data["training_profile"],
                            "the training profile",
                            "create it under configs/profiles/ or fix the path")
        return self._profile("$.training_profile", resolved) if resolved else None

    def _dataset_manifest(self) -> dict[str, Any] | None:
        resolved = self.ref("$.dataset.manifest", self.data["dataset"]["manifest"],
                            "the dataset manifest",
                            "register the data with `peftflow dataset register FILE.jsonl "
                            "--name N --version V`")
        return self._manifest("$.dataset.manifest", resolved) if resolved else None

    def _profile(self, path: str, resolved: Path) -> profile.Profile | None:
        cached = self.ctx.profiles.get(resolved)
        if cached is None:
            # Here, not at the top: a DAG parse whose specs are all cached never loads one.
            from peftflow.train import training_profile as profile

            try:
                cached = profile.load(resolved, display_path(resolved))
            except SpecError as exc:
                cached = exc
            self.ctx.profiles[resolved] = cached
        if isinstance(cached, SpecError):
            self.problems.extend(cached.problems)
            self.add(path, f"the training profile has {len(cached.problems)} problem(s), "
                     "listed with its own file name; fix them there")
            return None
        self.profiles.append((path, cached))
        return cached

    def _manifest(self, path: str, resolved: Path) -> dict[str, Any] | None:
        cached = self.ctx.manifests.get(resolved)
        if cached is None:
            cached = _read_manifest(resolved)
            self.ctx.manifests[resolved] = cached
        if isinstance(cached, SpecError):
            self.problems.extend(cached.problems)
            self.add(path, f"the dataset manifest has {len(cached.problems)} problem(s), "
                     "listed with its own file name; re-register the dataset with `peftflow "
                     "dataset register`")
            return None
        if isinstance(cached, str):
            self.add(path, f"the dataset manifest cannot be read: {cached}; "
                     "re-register the dataset with `peftflow dataset register`")
            return None
        return cached

    def _suites(self) -> None:
        kinds: set[str] = set()
        for i, value in enumerate(self.data["eval_suites"]):
            path = f"$.eval_suites[{i}]"
            resolved = self.ref(path, value, "the eval suite", "create it under configs/eval/")
            if resolved is None:
                continue
            kind = self.ctx.suites.get(resolved)
            if kind is None:
                kind = _suite_kind(resolved)
                self.ctx.suites[resolved] = kind
            if isinstance(kind, SpecError):
                self.problems.extend(kind.problems)
                self.add(path, "the eval suite is invalid (problems listed with its file name)")
            else:
                kinds.add(kind)
        if len(kinds) == 0:
            return
        for needed, rule in (("domain", "gate.domain"), ("retention", "gate.retention")):
            if needed not in kinds:
                self.add("$.eval_suites", f"no {needed} suite is listed, but {rule} needs one; "
                         f"add a configs/eval/*.yaml suite with kind: {needed}")

    def _trigger_refs(self) -> None:
        trigger = self.data.get("trigger", {})
        for i, value in enumerate(trigger.get("allowed_profiles", [])):
            path = f"$.trigger.allowed_profiles[{i}]"
            resolved = self.ref(path, value, "the profile", "create it or remove it from the list")
            if resolved:
                self._profile(path, resolved)
        for i, value in enumerate(trigger.get("allowed_manifests", [])):
            path = f"$.trigger.allowed_manifests[{i}]"
            resolved = self.ref(path, value, "the manifest", "register it or remove it")
            if resolved:
                self._manifest(path, resolved)

    def _schedule(self) -> None:
        sched = self.data.get("schedule")
        if not sched:
            return
        cron = sched.get("cron")
        if sched["enabled"] and not cron:
            self.add("$.schedule", "schedule.enabled is true but no cron is given; add e.g. "
                     "cron: '0 3 * * 1', or set enabled: false for manual runs only")
        if cron and not cron_rules.is_valid(cron):
            self.add("$.schedule.cron", f"{cron!r} is not a valid cron expression; use five "
                     "fields 'minute hour day-of-month month day-of-week', e.g. '0 3 * * 1', "
                     "or a preset (@hourly, @daily, @weekly, @monthly, @yearly)")
        elif cron and cron_rules.fires_within(cron, cron_rules.HORIZON_DAYS) is None:
            self.add("$.schedule.cron", f"{cron!r} never fires (or less than once in "
                     f"{cron_rules.HORIZON_DAYS} days), e.g. a day that no month has; fix the day "
                     "and month fields")
        elif cron and sched["enabled"] and sched.get("catchup"):
            backlog = cron_rules.runs_since(cron, spec.START_DATE, cron_rules.MAX_CATCHUP_RUNS + 1)
            if backlog > cron_rules.MAX_CATCHUP_RUNS:
                self.add("$.schedule.catchup", f"catchup: true would create more than "
                         f"{cron_rules.MAX_CATCHUP_RUNS} runs at once (every {cron!r} since "
                         f"the DAG's start date {spec.START_DATE}); set catchup: false and "
                         "backfill the range you need with `airflow backfill create`")
        tz = sched.get("timezone", "UTC")
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.add("$.schedule.timezone", f"{tz!r} is not a known IANA timezone; use e.g. "
                     "UTC or Europe/Berlin")

    def _retries(self) -> None:
        for stage_name, policy in self.data.get("retries", {}).items():
            delay, cap = policy.get("retry_delay_s"), policy.get("max_retry_delay_s")
            if delay is not None and cap is not None and cap < delay:
                self.add(f"$.retries.{stage_name}.max_retry_delay_s",
                         f"{cap} is smaller than retry_delay_s {delay}; use at least {delay}")

    def _consistency(self, prof: profile.Profile | None, manifest: dict[str, Any] | None) -> None:
        if manifest is None:
            return
        files = manifest.get("files")
        records = None
        if isinstance(files, list) and all(isinstance(f, dict) and "records" in f for f in files):
            records = sum(int(f["records"]) for f in files)
        if prof and records is not None and prof.training.documents_needed > records:
            t = prof.training
            self.add("$.dataset.manifest", f"the profile needs epoch_steps * micro_bsz = "
                     f"{t.epoch_steps} * {t.micro_bsz} = {t.documents_needed} documents but the "
                     f"dataset has {records} records (RWKV-PEFT's pad loader raises IndexError); "
                     f"lower epoch_steps to at most {records // t.micro_bsz} or add data")
        name = self.data["dataset"].get("name")
        if self.data.get("kind") == spec.SpecKind.RETRAIN.value:
            if not name:
                self.add("$.dataset", "a retrain_on_new_dataset spec needs dataset.name (its "
                         "asset is peftflow-dataset://<name>); add name: <dataset name>")
            elif manifest.get("name") not in (None, name):
                self.add("$.dataset.name", f"{name!r} differs from the manifest's dataset name "
                         f"{manifest.get('name')!r}; use the same name")

    def max_devices(self) -> dict[str, int]:
        return {key: max((getattr(p.runtime, key) for _, p in self.profiles), default=1)
                for key in spec.DEVICE_KEYS}

    def queue(self) -> str:
        """The Edge queue of the DAG's GPU tasks: its own profile's (the first one)."""
        return self.profiles[0][1].runtime.queue if self.profiles else spec.DEFAULT_QUEUE

    def _queues(self) -> None:
        """A DAG's GPU tasks have one queue, fixed when it is parsed, so a profile a trigger
        may choose cannot ask for another one."""
        queues = {p.runtime.queue for _, p in self.profiles}
        if len(queues) > 1:
            self.add("$.trigger.allowed_profiles", f"the allowed profiles name different "
                     f"runtime.queue values ({', '.join(sorted(queues))}); a DAG's GPU tasks "
                     "have one queue, fixed when the DAG is parsed: give them the same queue "
                     "or make a spec per queue")

    def _notify(self) -> None:
        """Channels that can deliver what they subscribe to: e-mail needs recipients, a
        webhook has none; a deadline needs a channel that hears it, and the reverse."""
        notify = self.data.get("notify")
        if not notify:
            return
        has_deadline = "training_overdue_after_s" in notify
        overdue_heard = False
        for i, channel in enumerate(notify["channels"]):
            at = f"$.notify.channels[{i}]"
            if channel["type"] == "email" and not channel.get("to"):
                self.add(at, "an email channel needs `to:` (a list of recipients), e.g. "
                         "to: [ml-team@example.com]")
            if channel["type"] != "email" and "to" in channel:
                self.add(f"{at}.to", f"a {channel['type']} channel has no recipients (the "
                         "webhook in its connection decides where messages go); remove `to:`")
            events = channel.get("events")
            overdue_heard |= events is None or "training_overdue" in events
            if events and "training_overdue" in events and not has_deadline:
                self.add(f"{at}.events", "training_overdue needs "
                         "notify.training_overdue_after_s (seconds after the run starts by "
                         "which training should be done), e.g. training_overdue_after_s: 21600")
        if has_deadline and not overdue_heard:
            self.add("$.notify.training_overdue_after_s", "no channel lists training_overdue "
                     "in its events, so the deadline would tell nobody; add training_overdue "
                     "to a channel's events or remove training_overdue_after_s")

    def _devices(self) -> None:
        """No profile may ask for more GPUs than this host's inventory lists: its task would
        take more pool slots than exist and never be scheduled. An unreadable inventory is
        `peftflow doctor`'s to report (and the stage's, when it leases)."""
        inventory = self.ctx.inventory
        if isinstance(inventory, Exception):
            return
        for path, prof in self.profiles:
            for key in spec.DEVICE_KEYS:
                wanted = getattr(prof.runtime, key)
                if wanted > len(inventory):
                    self.add(path, f"profile {display_path(prof.path)} asks for runtime.{key}: "
                             f"{wanted}, but the GPU inventory ({display_path(inventory.path)}) "
                             f"lists {len(inventory)} device(s): {', '.join(inventory.ids)}; add "
                             "the devices there and rerun ./setup_airflow.sh (it resizes pool "
                             f"gpu), or lower runtime.{key}")

    def _orchestration(self) -> None:
        wanted = self.data["orchestration_profile"]
        if self.ctx.active is not None and wanted != self.ctx.active.value:
            self.add("$.orchestration_profile", f"this spec belongs to {wanted!r} but the active "
                     f"orchestration profile is {self.ctx.active.value!r} (configs/orchestration"
                     ".yaml); only one profile may run training: move the spec out of dag_specs/"
                     " or switch with `./setup_airflow.sh --switch-profile`")


def _read_manifest(path: Path) -> dict[str, Any] | SpecError | str:
    """The manifest through its own loader (schema, limits, paths inside the roots), as the
    few facts validation compares with the spec and profile."""
    from peftflow.dataset.manifest import load_manifest

    try:
        loaded = load_manifest(path)
    except SpecError as exc:
        return exc
    except PeftflowError as exc:
        return str(exc)
    return {"name": loaded.name,
            "files": [{"records": entry.records} for entry in loaded.files]}


def _suite_kind(path: Path) -> str | SpecError:
    shown = display_path(path)
    try:
        marked = yamlmarks.load_file(str(path), shown)
        if (settings.get().schemas_dir / "eval_suite.schema.json").exists():
            schemas.check(marked, "eval_suite", shown)
        if not isinstance(marked.data, dict) or marked.data.get("kind") not in ("domain",
                                                                                "retention"):
            raise SpecError([Problem(shown, 1, 1, "$.kind", "kind must be domain or retention")])
        return str(marked.data["kind"])
    except SpecError as exc:
        return exc


def _inventory() -> inventory_mod.Inventory | Exception:
    try:
        return inventory_mod.load()
    except (PeftflowError, OSError) as exc:
        return exc


def _active_profile() -> orchestration.OrchestrationProfile | None:
    try:
        return orchestration.load().active
    except (PeftflowError, OSError):
        return None


def load_spec(path: Path, ctx: _Context | None = None,
              cache: SpecCache | None = None) -> spec.Spec:
    """Validate one spec file and return it typed; raise SpecError with every problem.

    With a cache, a spec whose bytes and referenced files are unchanged since it last
    validated is not validated again (the dag-processor re-parses every 30-60 s).
    """
    ctx = ctx or _Context(active=_active_profile())
    shown = display_path(path)
    raw = yamlmarks.read_limited(str(path), shown)  # regular files of bounded size only
    digest = sha256_bytes(raw)
    if cache is not None:
        data = cache.get(path, digest)
        if data is not None:
            return spec.from_data(data, path.resolve(), digest)
    marked = yamlmarks.load_bytes(raw, shown)
    if not isinstance(marked.data, dict):
        kind = type(marked.data).__name__
        raise SpecError([Problem(shown, *marked.locate("$"), "$", f"the document is a {kind}, "
                                 "not a mapping; a spec is a mapping of keys such as dag_id")])
    schema_problems = schemas.problems(marked, "dag_spec", shown)
    checker = _Checker(marked, shown, ctx)
    checker.run(lenient=bool(schema_problems))
    found = schema_problems + [p for p in checker.problems
                               if not any(_related(p.path, s.path) for s in schema_problems)]
    # (a missing top-level key is reported at "$", which relates only to itself)
    if len(found) > MAX_PROBLEMS:  # the first ones say what is wrong; thousands say no more
        more = len(found) - MAX_PROBLEMS
        found = [*found[:MAX_PROBLEMS], Problem(shown, 1, 1, "$", f"... and {more} more "
                                                "problem(s) of this file not shown")]
    if found:
        raise SpecError(found)
    data = {**marked.data, spec.DERIVED_KEY: {"max_devices": checker.max_devices(),
                                              "queue": checker.queue()}}
    if cache is not None:
        cache.put(path, digest, checker.deps, data)
    return spec.from_data(data, path.resolve(), digest)


def _related(a: str, b: str) -> bool:
    """One YAML path is the other or lies inside it: a check repeating a schema problem."""
    def inside(x: str, y: str) -> bool:
        return x == y or (y != "$" and x.startswith(y) and x[len(y)] in ".[")

    return inside(a, b) or inside(b, a)


def spec_files(paths: Iterable[Path]) -> list[Path]:
    """The specs to load: `*.yaml`/`*.yml` (lower case, not hidden) of each folder, and each
    file named directly. Whether an entry is a regular file is checked when it is read."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if _is_spec_name(p.name)))
        else:
            files.append(path)
    return files


def _is_spec_name(name: str) -> bool:
    return Path(name).suffix in SPEC_SUFFIXES and not name.startswith(".")


def stray_files(paths: Iterable[Path]) -> dict[Path, SpecError]:
    """Entries of spec folders that look like specs but are not read, each with the reason
    (a hidden `.x.yaml`, `X.YAML`, `x.yaml.bak`): reported, never skipped silently."""
    found: dict[Path, SpecError] = {}
    for folder in paths:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            name = entry.name
            if _is_spec_name(name) or not any(s in name.lower() for s in SPEC_SUFFIXES):
                continue
            why = ("is hidden (starts with '.'), so it is not read; rename it without the dot "
                   "or move it out of the folder" if name.startswith(".") else
                   "is not read: only names ending in lower-case .yaml or .yml are specs; "
                   "rename it, or move it out of the folder")
            found[entry] = SpecError([Problem(display_path(entry), 1, 1, "$", why)])
    return found


@dataclass
class Result:
    specs: list[spec.Spec]
    errors: dict[Path, SpecError]

    @property
    def problems(self) -> list[Problem]:
        return [p for err in self.errors.values() for p in err.problems]


def validate_paths(paths: Iterable[Path], cache: SpecCache | None = None) -> Result:
    """Validate every spec under `paths`; dag ids must be unique across all of them."""
    ctx = _Context(active=_active_profile())
    paths = list(paths)
    errors: dict[Path, SpecError] = stray_files(paths)
    by_id: dict[str, list[spec.Spec]] = {}
    files = spec_files(paths)
    if len(files) > MAX_SPEC_FILES:
        first_unread = files[MAX_SPEC_FILES]
        errors[first_unread.parent] = SpecError([Problem(
            display_path(first_unread.parent), 1, 1, "$",
            f"{len(files)} spec files, more than the {MAX_SPEC_FILES} that load inside "
            f"Airflow's import timeout; only the first {MAX_SPEC_FILES} by name are read, "
            f"from {display_path(first_unread)} on nothing is: move unused specs out of the "
            "folder")])
        files = files[:MAX_SPEC_FILES]
    for file in files:
        try:
            loaded = load_spec(file, ctx, cache)
        except SpecError as exc:
            errors[file] = exc
            continue
        except Exception as exc:  # one spec must never break the others (or the DAG file)
            errors[file] = SpecError([Problem(
                display_path(file), 1, 1, "$", f"could not be validated: {type(exc).__name__}:"
                f" {str(exc)[:200]}; this is a peftflow bug: please report it with the file")])
            continue
        by_id.setdefault(loaded.dag_id, []).append(loaded)
    specs: list[spec.Spec] = []
    for dag_id, same in by_id.items():
        if len(same) == 1:
            specs.append(same[0])
            continue
        for one in same:  # none wins: a copied file must not take over another's DAG
            others = ", ".join(display_path(o.path) for o in same if o is not one)
            marked = yamlmarks.load_file(str(one.path), display_path(one.path))
            line, col = marked.locate("$.dag_id")
            errors[one.path] = SpecError([Problem(
                display_path(one.path), line, col, "$.dag_id",
                f"dag_id {dag_id!r} is also used by {others}; dag ids must be unique, so "
                "neither becomes a DAG until one is renamed")])
    if cache is not None:
        cache.save()
    return Result(sorted(specs, key=lambda s: str(s.path)), errors)
