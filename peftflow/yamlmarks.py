"""YAML loading that remembers where every value came from.

`load(text, file)` returns the plain data and a map from JSON path ("$.gate.domain") to the
1-based (line, column) of that node, so a validation error can point at the exact spot.
Safe loading only; duplicate keys are an error (PyYAML would silently keep the last one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from peftflow.errors import Problem, SpecError

# libyaml's parser when PyYAML was built with it: about 10x faster, same nodes and marks.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
        return self.constructor.construct_object(node, deep=True)

    def _problem(self, node: yaml.Node, path: str, message: str) -> SpecError:
        mark = node.start_mark
        return SpecError([Problem(self.file, mark.line + 1, mark.column + 1, path, message)])


def load(text: str, file: str) -> Marked:
    """Parse one YAML document; raise SpecError with a located message on any problem."""
    try:
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


def load_file(path: str, display: str | None = None) -> Marked:
    shown = display or path
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise SpecError([Problem(shown, 1, 1, "$", "file not found")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            [Problem(shown, line, 1, "$", "file is not valid UTF-8; save it as UTF-8")]
        ) from None
    return load(text, shown)
