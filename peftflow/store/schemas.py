"""JSON Schemas of `schemas/`, and validation that reports located, fixable problems."""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from peftflow import settings
from peftflow.errors import Problem, SpecError
from peftflow.store.yamlmarks import Marked, child_path

SCHEMA_BASE_ID = "https://peftflow.dev/schemas/"


@functools.cache
def _load(schemas_dir: str, name: str) -> dict[str, Any]:
    path = Path(schemas_dir) / f"{name}.schema.json"
    with open(path, encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    # Not check_schema() here: it costs ~40 ms per schema in every stage process, and the
    # shipped schemas are proven valid by tests/test_schemas.py.
    return schema


def load_schema(name: str) -> dict[str, Any]:
    """The schema `schemas/<name>.schema.json`, e.g. load_schema("stage_status")."""
    return _load(str(settings.get().schemas_dir), name)


@functools.cache
def _validator(schemas_dir: str, name: str) -> Draft202012Validator:
    return Draft202012Validator(
        _load(schemas_dir, name), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def validator(name: str) -> Draft202012Validator:
    return _validator(str(settings.get().schemas_dir), name)


def _fix_hint(error: jsonschema.ValidationError) -> str:
    """A short 'how to fix' for the common schema failures."""
    kind, value = error.validator, error.validator_value
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
    if kind == "enum":
        return f"; use one of: {', '.join(json.dumps(v) for v in value)}"
    if kind == "type":
        return f"; write a value of type {value}"
    if kind == "required":
        return "; add it"
    if kind == "minimum":
        return f"; use a value >= {value}"
    if kind == "maximum":
        return f"; use a value <= {value}"
    if kind in ("exclusiveMinimum", "exclusiveMaximum"):
        return f"; the limit is {value}, exclusive"
    if kind == "pattern":  # a schema may say in words what its pattern wants
        hint = error.schema.get("x-hint") if isinstance(error.schema, dict) else None
        return f"; {hint}" if hint else f"; it must match {value}"
    if kind == "minItems":
        return f"; give at least {value} item(s)"
    if kind == "minLength":
        return "; it must not be empty"
    return ""


def _describe(error: jsonschema.ValidationError) -> tuple[str, str]:
    """JSON path and message of one error, pointing at the offending key if there is one."""
    path = error.json_path
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            close = difflib.get_close_matches(str(extra[0]), sorted(allowed), n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            return child_path(path, extra[0]), (
                f"unknown key {extra[0]!r}{guess}" + _fix_hint(error)
            )
    if error.validator == "required":
        return path, f"{error.message}" + _fix_hint(error)
    return path, f"{error.message}{_fix_hint(error)}"


def problems(doc: Marked | Any, schema_name: str, file: str) -> list[Problem]:
    """All schema problems of a document, sorted by position in the file."""
    marked = doc if isinstance(doc, Marked) else Marked(doc)
    found: list[Problem] = []
    for error in validator(schema_name).iter_errors(marked.data):
        leaves = _leaf_errors(error)
        for leaf in leaves:
            path, message = _describe(leaf)
            # An unknown key is pointed at by its key; a bad value by the value itself.
            at_key = leaf.validator == "additionalProperties" and path in marked.key_marks
            line, col = marked.key_marks[path] if at_key else marked.locate(path)
            found.append(Problem(file, line, col, path, message))
    unique = {(p.line, p.col, p.path, p.message): p for p in found}
    return sorted(unique.values(), key=lambda p: (p.line, p.col, p.path))


def _leaf_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """For oneOf/anyOf failures, report the best matching branch instead of the whole blob."""
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return _leaf_errors(best) if best is not None else [error]
    return [error]


def check(doc: Marked | Any, schema_name: str, file: str) -> None:
    """Raise SpecError listing every problem, or return when the document is valid."""
    found = problems(doc, schema_name, file)
    if found:
        raise SpecError(found)
