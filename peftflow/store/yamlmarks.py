"""YAML loading that remembers where every value came from.

`load(text, file)` returns the plain data and a map from JSON path ("$.gate.domain") to the
1-based (line, column) of that node, so a validation error can point at the exact spot.
Safe loading only; duplicate keys are an error (PyYAML would silently keep the last one).

Every file the project reads this way is a small config file, so limits are checked before
any expensive work, and a hostile file fails with a located message instead of exhausting
the parser: only regular files (a FIFO would block, /dev/zero never ends), at most
MAX_BYTES, nesting at most MAX_DEPTH, at most MAX_NODES nodes, and no aliases (`*name`):
an alias "bomb" of a few lines expands to billions of nodes, and no config here needs one.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

from peftflow.errors import Problem, SpecError

# libyaml's parser when PyYAML was built with it: about 10x faster, same nodes and marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_BYTES = 1_000_000  # a spec or profile is a few KB
MAX_DEPTH = 32  # the deepest config nests 5 levels
MAX_NODES = 20_000
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def child_path(parent: str, key: object) -> str:
    """Extend a JSON path the way jsonschema's `error.json_path` spells it."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    text = str(key)
    return f"{parent}.{text}" if _IDENT.match(text) else f"{parent}['{text}']"


@dataclass
class Marked:
    data: Any
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: str) -> tuple[int, int]:
        """Line and column of `path`, or of its nearest ancestor that exists."""
        probe = path
        while probe:
            if probe in self.marks:
                return self.marks[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            if cut <= 0:
                break
            probe = probe[:cut]
        return self.marks.get("$", (1, 1))


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.marks: dict[str, tuple[int, int]] = {}
        self.key_marks: dict[str, tuple[int, int]] = {}
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: str) -> Any:
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.constructor.construct_object(key_node, deep=True)
                if isinstance(key, (list, dict)):
                    raise self._problem(key_node, path, "a mapping key must be a plain scalar")
                surprise = _surprise(key_node, key)
                if surprise:  # `on:` as a key is the boolean true in YAML 1.1
                    raise self._problem(key_node, path, f"key {surprise}")
                sub = child_path(path, key)
                if key in result:
                    raise self._problem(
                        key_node, sub, f"duplicate key {key!r}; keep one of the entries"
                    )
                key_at = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                self.key_marks[sub] = key_at
                result[key] = self.build(value_node, sub)
                if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)) and \
                        not value_node.flow_style:
                    # A block collection starts on the line after its key; point at the key.
                    self.marks[sub] = key_at
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, child_path(path, i)) for i, item in enumerate(node.value)]
        value = self.constructor.construct_object(node, deep=True)
        surprise = _surprise(node, value)
        if surprise:
            raise self._problem(node, path, surprise)
        return value

    def _problem(self, node: yaml.Node, path: str, message: str) -> SpecError:
        mark = node.start_mark
        return SpecError([Problem(self.file, mark.line + 1, mark.column + 1, path, message)])


_PLAIN_BOOL = {"true", "false"}
_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")


def _surprise(node: yaml.Node, value: Any) -> str | None:
    """A plain scalar that YAML 1.1 reads as something its author rarely means, or a number
    that no config can use: refused with the fix instead of failing hours later."""
    if not isinstance(node, yaml.ScalarNode) or node.style:  # quoted: a string, as written
        return None
    raw = str(node.value)
    if isinstance(value, bool) and raw.lower() not in _PLAIN_BOOL:
        return (f"{raw!r} is read as the boolean {str(value).lower()} by YAML 1.1; write "
                f"{str(value).lower()} for a boolean, or quote it (\"{raw}\") for a string")
    if isinstance(value, int) and not isinstance(value, bool) and not _PLAIN_INT.fullmatch(raw):
        how = "a base-60 (sexagesimal) number" if ":" in raw else "an octal, hex or binary" \
            " number" if re.match(r"[-+]?0[0-9xXbBoO]", raw) else "a number with separators"
        return (f"{raw!r} is read as {how} ({value}) by YAML 1.1; write the plain decimal "
                f"{value}, or quote it (\"{raw}\") for a string")
    if isinstance(value, float):
        if ":" in raw:
            return (f"{raw!r} is read as the base-60 number {value} by YAML 1.1; quote it "
                    f"(\"{raw}\") for a string, or write the decimal")
        if not math.isfinite(value):
            return (f"{raw!r} is not a finite number (NaN and infinities are never valid "
                    "here); write a number such as 0.01")
    return None


def check_data(data: Any, file: str) -> None:
    """The depth and node limits for data parsed by another reader (JSON), iteratively."""
    stack, nodes = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            what = f"nested deeper than {MAX_DEPTH} levels" if depth > MAX_DEPTH else \
                f"more than {MAX_NODES} values"
            raise SpecError([Problem(file, 1, 1, "$", f"{what}; a peftflow file is small and "
                                     "flat: is this the right file?")])
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _located(file: str, mark: Any, message: str) -> SpecError:
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return SpecError([Problem(file, line, col, "$", message)])


def _check_shape(text: str, file: str) -> None:
    """Refuse aliases, deep nesting and huge node counts from the event stream (iterative,
    so a 100,000-deep list cannot exhaust the recursion of the composer)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.AliasEvent):
            raise _located(file, event.start_mark, f"alias *{event.anchor} is not allowed: "
                           "aliases and anchors are refused in peftflow YAML (a few aliases "
                           "can expand to billions of nodes); write the value out")
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_NODES:
                raise _located(file, event.start_mark, f"more than {MAX_NODES} YAML nodes; "
                               "a peftflow config is small: split or shorten this file")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _located(file, event.start_mark, f"nested deeper than {MAX_DEPTH} "
                               "levels; flatten this value")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load(text: str, file: str) -> Marked:
    """Parse one YAML document; raise SpecError with a located message on any problem."""
    try:
        _check_shape(text, file)
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or str(exc)
        raise SpecError(
            [Problem(file, line, col, "$", f"YAML syntax error: {reason}; fix the YAML syntax")]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(file, 1, 1, "$", f"YAML error: {exc}")]) from None
    if node is None:
        raise SpecError([Problem(file, 1, 1, "$", "the file is empty; write a mapping here")])
    builder = _Builder(file)
    try:
        data = builder.build(node, "$")
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError([Problem(file, line, col, "$", f"YAML error: {exc.problem}")]) from None
    return Marked(data, builder.marks, builder.key_marks)


def read_limited(path: str, shown: str, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; SpecError (FILE:1:1) otherwise.

    Opened non-blocking, so a FIFO named like a config file cannot hang the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SpecError([Problem(shown, 1, 1, "$", "file not found")]) from None
    except OSError as exc:
        raise SpecError([Problem(shown, 1, 1, "$", f"cannot open: {exc.strerror}; check "
                                 "the path and its permissions")]) from None
    try:
        mode = os.fstat(fd).st_mode
        kind = next((name for test, name in _KINDS if test(mode)), None)
        if kind is not None or not stat.S_ISREG(mode):
            raise SpecError([Problem(shown, 1, 1, "$", f"is {kind or 'not a regular file'}, "
                                     "not a regular file; remove it or replace it with a file")])
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SpecError([Problem(shown, 1, 1, "$", f"cannot read: {exc.strerror}")]) from None
    finally:
        os.close(fd)
    if size > limit:
        raise SpecError([Problem(shown, 1, 1, "$", f"larger than {limit:,} bytes; a peftflow "
                                 "config is a few KB: is this the right file?")])
    return b"".join(chunks)


def load_file(path: str, display: str | None = None) -> Marked:
    shown = display or path
    return load_bytes(read_limited(path, shown), shown)


def load_bytes(raw: bytes, shown: str) -> Marked:
    """`load` of a file's bytes, which must be UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            [Problem(shown, line, 1, "$", "file is not valid UTF-8; save it as UTF-8")]
        ) from None
    return load(text, shown)
