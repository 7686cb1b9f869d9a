"""`peftflow eval ...`: check eval suites (schema, data hash, token counts) without a model."""

from __future__ import annotations

import argparse

from peftflow.errors import IntegrityError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ev = subparsers.add_parser("eval", help="evaluation suite helpers")
    actions = ev.add_subparsers(dest="eval_command", metavar="ACTION")
    check = actions.add_parser(
        "check-suite",
        help="validate eval suites and their data; print documents and tokens scored",
        description="Validate eval suite YAMLs against schemas/eval_suite.schema.json, check "
        "the data file's sha256 and print what evaluate_adapter would score. A hash mismatch "
        "prints the file's current sha256 and exits 5.",
    )
    check.add_argument("suites", nargs="+", metavar="SUITE", help="configs/eval/*.yaml")
    check.set_defaults(func=_check_suite)
    ev.set_defaults(func=lambda args: (ev.print_help(), 2)[1])


def _check_suite(args: argparse.Namespace) -> int:
    from peftflow.evaluate import suites
    from peftflow.store.hashing import sha256_file

    loaded = suites.load_all(args.suites)
    encode = suites.encoder()
    failed: IntegrityError | None = None
    for suite in loaded:
        try:
            docs = suites.tokenize(suite, encode)
        except IntegrityError as exc:
            print(f"{suite.path}: FAIL {suite.name}: data sha256 is now "
                  f"{sha256_file(suite.data_path)}")
            failed = failed or exc
            continue
        print(f"{suite.path}: ok {suite.name} ({suite.kind.value}): {len(docs.windows)} "
              f"documents, {docs.tokens} tokens, ctx_len {suite.ctx_len}")
    if failed:
        raise failed
    return 0
