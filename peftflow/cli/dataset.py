"""`peftflow dataset ...`: register a dataset version; rebuild the smoke corpus."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from peftflow.errors import IntegrityError

SMOKE_TRAIN = Path("data/smoke/pydoc-docs/v1/train.jsonl")
SMOKE_HELD_OUT = Path("configs/eval/data/pydoc_heldout.jsonl")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dataset = subparsers.add_parser("dataset", help="dataset versions and the smoke corpus")
    actions = dataset.add_subparsers(dest="dataset_command", metavar="ACTION")
    reg = actions.add_parser(
        "register",
        help="write the manifest of one dataset version (sha256, size, record count)",
        description="Write <stem>.manifest.json beside FILE (or at --out). The data file is "
        "only read. Registering the same name and version again is a no-op when the content "
        "is identical and is refused (exit 5) when it differs.",
    )
    reg.add_argument("file", metavar="FILE.jsonl", help="the JSONL data file")
    reg.add_argument("--name", required=True, help="dataset name, e.g. pydoc-docs")
    reg.add_argument("--version", required=True, help="dataset version, e.g. v1")
    reg.add_argument("--text-field", default="text", help="key holding the text (default text)")
    reg.add_argument("--source", default="", help="where the data came from")
    reg.add_argument("--notes", default="", help="free-text notes")
    reg.add_argument("--out", help="manifest path (default: <stem>.manifest.json beside FILE)")
    reg.add_argument("--no-announce", action="store_true",
                     help="do not emit the Airflow asset event for a new version (which "
                     "starts the retrain DAGs of this dataset)")
    reg.set_defaults(func=_register)
    ann = actions.add_parser(
        "announce",
        help="emit the Airflow asset event of a registered version (starts retrain DAGs)",
        description="POST the asset event peftflow-dataset://<name> with this manifest as "
        "its extra and say, per DAG scheduled on it, which run started (or that the DAG is "
        "paused). Use it when Airflow was down during `register`, or after unpausing a "
        "retrain DAG that missed the event. Exit 1 when no run could start.",
    )
    ann.add_argument("manifest", help="a *.manifest.json written by `register`")
    ann.set_defaults(func=_announce)
    smoke = actions.add_parser(
        "make-smoke",
        help="rebuild the smoke corpus from Python's own docs (pydoc_data)",
        description=f"Write {SMOKE_TRAIN} and {SMOKE_HELD_OUT} under the project root. Refuses "
        "to change a file that a manifest has registered (the text depends on the CPython "
        "version); write elsewhere with --train/--held-out.",
    )
    smoke.add_argument("--train", help=f"training JSONL (default <root>/{SMOKE_TRAIN})")
    smoke.add_argument("--held-out", help=f"held-out JSONL (default <root>/{SMOKE_HELD_OUT})")
    smoke.set_defaults(func=_make_smoke)
    dataset.set_defaults(func=lambda args: (dataset.print_help(), 2)[1])


def _register(args: argparse.Namespace) -> int:
    from peftflow.dataset.manifest import load_manifest, register_dataset

    path, created = register_dataset(args.file, args.name, args.version, args.text_field,
                                     args.source, args.notes, args.out)
    manifest = load_manifest(path)
    entry = manifest.files[0]
    print(path, flush=True)  # first line of stdout, for scripts
    if created:
        print(f"registered {manifest.label}: {entry.records} records, {entry.bytes} bytes, "
              f"sha256 {entry.sha256[:12]}... -> {path}", file=sys.stderr)
        if args.no_announce:
            print(f"not announced (--no-announce): no run starts; to start the DAGs on this "
                  f"version later: peftflow dataset announce {path}", file=sys.stderr)
        else:
            from peftflow.airflow.triggers import announce_dataset

            announce_dataset(Path(path), manifest.name, manifest.version)
    else:
        print(f"{manifest.label} is already registered with identical content in {path}; "
              "nothing changed and nothing starts (to start the DAGs on it again: "
              f"peftflow dataset announce {path})", file=sys.stderr)
    return 0


def _announce(args: argparse.Namespace) -> int:
    from peftflow.airflow.triggers import announce_dataset
    from peftflow.dataset.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    return 0 if announce_dataset(Path(args.manifest), manifest.name, manifest.version) else 1


def _make_smoke(args: argparse.Namespace) -> int:
    from peftflow import settings
    from peftflow.dataset.manifest import manifest_path_for, scan_file
    from peftflow.smoke import data as smoke_data
    from peftflow.store import atomic

    root = settings.get().project_root
    train = Path(args.train) if args.train else root / SMOKE_TRAIN
    held_out = Path(args.held_out) if args.held_out else root / SMOKE_HELD_OUT
    with tempfile.TemporaryDirectory(prefix="peftflow-smoke-") as tmp:
        new_train, new_held = Path(tmp) / "train.jsonl", Path(tmp) / "heldout.jsonl"
        counts = smoke_data.write(new_train, new_held)
        manifest = manifest_path_for(train)
        if manifest.exists() and train.exists() and scan_file(train) != scan_file(new_train):
            raise IntegrityError(
                f"{train} is registered in {manifest} and this Python's pydoc text differs "
                "from it; keep the registered file, or write elsewhere with --train/--held-out "
                "and register that as a new version"
            )
        for new, target in ((new_train, train), (new_held, held_out)):
            atomic.write_bytes(target, new.read_bytes())  # small files
    print(f"smoke corpus: {counts[0]} training documents -> {train}; {counts[1]} held-out "
          f"documents -> {held_out}", file=sys.stderr)
    return 0
