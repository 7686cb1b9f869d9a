"""Find the release or run folder a user names on the command line.

A NAME is `PROFILE/VERSION` (a release under the releases root), `DAG_ID/RUN_ID` (a run under
the artifact root; the run id as Airflow writes it or as its folder is named) or the path of a
release or run folder. `release:NAME` and `run:NAME` say which is meant. A name must match
exactly one folder; two plain segments, never `..`, and it must stay inside its root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from peftflow import settings
from peftflow.errors import ConfigError, MissingInputError
from peftflow.release import registry
from peftflow.release.compare.sides import Kind
from peftflow.run.runinfo import safe_segment
from peftflow.run.side import kind_of

_DAG_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SHOWN = 5  # candidates named in a "not found" message


@dataclass(frozen=True)
class Target:
    kind: Kind
    folder: Path  # absolute, resolved


def _accept(target: Target, root: Path, found: list[Target], notes: list[str]) -> None:
    """A named folder counts only inside its root: a symlink out of it is refused."""
    real = target.folder.resolve()
    if real.is_relative_to(root.resolve()):
        found.append(Target(target.kind, real))
    else:
        notes.append(f"{target.kind}: {target.folder} resolves to {real}, outside {root}; "
                     "a name stays inside its root (pass the folder's path if you mean it)")


def _names(folder: Path) -> list[str]:
    """Sub-folder names, skipping the hidden and the internal ones (_cache, .tmp-*)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name[0] not in "._")


def _some(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _release(first: str, second: str, found: list[Target], notes: list[str]) -> None:
    root = settings.get().releases_root
    if not (registry.VERSION_RE.match(first) and registry.VERSION_RE.match(second)):
        notes.append("release: not PROFILE/VERSION (letters, digits, '.', '_', '-')")
        return
    folder = root / first / second
    if (folder / registry.MANIFEST).is_file():
        _accept(Target(Kind.RELEASE, folder), root, found, notes)
        return
    known = _names(root / first)
    hint = f"releases of {first}: {_some(known)}" if known else f"no releases of {first}"
    notes.append(f"release: no {folder}/{registry.MANIFEST} ({hint}; list them with "
                 "`peftflow releases list`)")


def _run(first: str, second: str, found: list[Target], notes: list[str]) -> None:
    root = settings.get().artifact_root
    if not _DAG_ID.match(first) or second in ("", ".", ".."):
        notes.append("run: not DAG_ID/RUN_ID")
        return
    folder = root / first / safe_segment(second)
    if folder.is_dir() and kind_of(folder) is Kind.RUN:
        _accept(Target(Kind.RUN, folder), root, found, notes)
        return
    runs, dags = _names(root / first), _names(root)
    hint = f"runs of {first}: {_some(runs)}" if runs else \
        f"no runs of DAG {first}; DAGs with runs: {_some(dags) or 'none'}"
    notes.append(f"run: no run folder {folder} ({hint}; each run folder is "
                 f"{root}/DAG_ID/RUN_ID)")


def _path(name: str, found: list[Target], notes: list[str]) -> None:
    path = Path(name).expanduser()
    if not path.exists():
        notes.append(f"path: no folder {path}")
        return
    kind = kind_of(path) if path.is_dir() else None
    if kind is None:
        what = "a file" if not path.is_dir() else "a folder without release_manifest.json " \
            "or stage folders (prepare_dataset/, train_adapter/, evaluate_adapter/)"
        roots = settings.get()
        raise ConfigError(f"{path}: is {what}, neither a release nor a run; pass a release "
                          f"folder ({roots.releases_root}/PROFILE/VERSION) or a run folder "
                          f"({roots.artifact_root}/DAG_ID/RUN_ID)"
                          + (f", e.g. {path.parent}" if kind_of(path.parent) else ""))
    found.append(Target(kind, path.resolve()))


def locate(name: str) -> Target:
    """The one release or run folder `name` means; a located error for none or several."""
    if not name.strip() or _CONTROL.search(name):
        raise ConfigError(f"{name!r}: not a name of a release or run; write PROFILE/VERSION, "
                          "DAG_ID/RUN_ID or a folder path")
    wanted, _, rest = name.partition(":")
    only = Kind(wanted) if wanted in (Kind.RELEASE, Kind.RUN) and rest else None
    written = rest if only else name
    found: list[Target] = []
    notes: list[str] = []
    first, slash, second = written.partition("/")
    if slash and "/" not in second and ".." not in (first, second):
        if only in (None, Kind.RELEASE):
            _release(first, second, found, notes)
        if only in (None, Kind.RUN):
            _run(first, second, found, notes)
    else:
        notes.append("name: not two plain segments (PROFILE/VERSION or DAG_ID/RUN_ID; '..' "
                     "is never part of a name)")
    try:
        _path(written, found, notes)
    except ConfigError:
        if not found:
            raise  # a folder that is no run or release; a name that matched wins over it
    found = [t for t in dict.fromkeys(found) if only in (None, t.kind)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"{name!r} is ambiguous: it names " + " and ".join(
            f"the {t.kind} {t.folder}" for t in found) + f"; write release:{written} or "
            f"run:{written} for a name, or ./{written} for the folder")
    raise MissingInputError(f"{name!r} names no release or run:\n  "
                            + "\n  ".join(notes))


def png_name(a: str, b: str) -> str:
    """compare-<A>-vs-<B>.png with both labels made safe as one file name."""
    return f"compare-{safe_segment(a)[:100]}-vs-{safe_segment(b)[:100]}.png"
