"""One evaluation: check inputs, merge, score base and adapted model, write the outputs."""

from __future__ import annotations

import contextlib
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import ConfigError, IntegrityError, MissingInputError
from peftflow.evaluate import chart, merge, scoring, suites, verdict
from peftflow.evaluate.suites import Documents
from peftflow.progress import Progress, Rate
from peftflow.store import atomic, schemas
from peftflow.store import status_record as status
from peftflow.store.hashing import sha256_file
from peftflow.train import training_profile as profile_mod
from peftflow.train.training_profile import PeftMethod

METRICS, VERDICT, CHART = "metrics.json", "verdict.json", "eval_chart.png"
OUTPUT_FILES = (METRICS, VERDICT, CHART)
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 1000, 0


@dataclass(frozen=True)
class Request:
    profile: Path
    adapter: Path
    suites: tuple[Path, ...]
    out: Path
    thresholds: verdict.Thresholds
    baseline_metrics: Path | None = None
    write_merged: Path | None = None
    pissa_init: Path | None = None
    threads: int | None = None  # None: the profile's runtime.threads


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json (e.g. the released adapter's), schema-checked."""
    if not path.is_file():
        raise MissingInputError(f"{path}: baseline metrics not found (--baseline-metrics)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc}); pass the released adapter's "
                             "metrics.json") from None
    schemas.check(doc, "eval_metrics", str(path))
    return doc  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Prepared:
    """Everything checked and merged, before any model is scored."""

    profile: profile_mod.Profile
    suites: list[suites.Suite]
    documents: list[Documents]  # not suites.Documents: the field above shadows the module
    baseline: dict[str, Any] | None
    adapter: status.FileRef
    base: status.FileRef
    merged_path: Path  # the adapted model file the rwkv package loads
    merge_summary: dict[str, Any]
    notes: list[str]


def evaluate(req: Request, rec: status.StageRecorder) -> dict[str, Any]:
    """Run the evaluation; returns the verdict document. Raises before scoring on bad inputs."""
    prep = _prepare(req, rec)
    meter = scoring.Throughput()
    try:
        threads = prep.profile.runtime.threads if req.threads is None else req.threads
        base_scores = _score_all("base", Path(prep.base.path), prep, threads, meter)
        adapted_scores = _score_all("adapted", prep.merged_path, prep, threads, meter)
    finally:
        if req.write_merged is None:
            with contextlib.suppress(FileNotFoundError):
                prep.merged_path.unlink()
    comparisons = [scoring.compare(b, a, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
                   for b, a in zip(base_scores, adapted_scores, strict=True)]
    return _report(req, rec, prep, comparisons, meter)


def _prepare(req: Request, rec: status.StageRecorder) -> Prepared:
    """Check every input (cheap checks first), merge, write the adapted model's file."""
    if not req.profile.is_file():
        raise MissingInputError(f"{req.profile}: profile not found (--profile)")
    prof = profile_mod.load(req.profile)
    rec.add_input("profile", req.profile)
    loaded = suites.load_all(req.suites)
    for suite in loaded:
        suites.verify_data(suite)
        rec.add_input(f"suite:{suite.name}", suite.path)
        rec.add_input(f"suite_data:{suite.name}", suite.data_path)
    baseline = read_metrics(req.baseline_metrics) if req.baseline_metrics else None
    if req.baseline_metrics:
        rec.add_input("baseline_metrics", req.baseline_metrics)

    adapter_sd = merge.load_checkpoint(req.adapter, "adapter checkpoint")
    adapter_ref = rec.add_input("adapter", req.adapter)
    base_path = prof.model.base_model_path()
    if not base_path.is_file():
        raise MissingInputError(f"{base_path}: base model of profile {req.profile} not found; "
                                "create it (peftflow model init-tiny --profile ...) or fix "
                                "model.base_model")
    base_sd = merge.load_checkpoint(base_path, "base model")
    merge.check_base(base_sd, prof, base_path)
    base_ref = rec.add_input("base_model", base_path)
    if req.write_merged is not None and req.write_merged.resolve() in (
            base_path.resolve(), req.adapter.resolve()):
        raise ConfigError(f"--write-merged {req.write_merged}: that is the base model or the "
                          "adapter itself; write the merged model to a new path")
    init_sd = None
    if prof.peft.method is PeftMethod.PISSA:
        init_path = req.pissa_init or req.adapter.parent / "init_pissa.pth"
        init_sd = merge.load_checkpoint(init_path, "PiSSA init file (init_pissa.pth)")
        rec.add_input("pissa_init", init_path)
    merged = merge.merge(base_sd, adapter_sd, prof, req.adapter, init_sd)
    notes = []
    if prof.quantization != "none":
        notes.append(f"trained on a {prof.quantization}-quantised base; merged into and "
                     "scored against the full-precision base")
    encode = suites.encoder()
    documents = [suites.tokenize(s, encode) for s in loaded]
    # The rwkv package loads models from .pth files only, so the merged weights go to a file:
    # the release path when asked for, else a temp file in the output folder.
    merged_path = req.write_merged or req.out / f"{atomic.TMP_PREFIX}merged.pth"
    merge.write_merged(merged.state_dict, merged_path)
    summary = {"path": adapter_ref.path, "sha256": adapter_ref.sha256,
               "method": merged.method.value, "scaling": merged.scaling,
               "merged_tensors": len(merged.merged), "replaced_tensors": len(merged.replaced)}
    del base_sd, adapter_sd, init_sd, merged
    gc.collect()
    return Prepared(prof, loaded, documents, baseline, adapter_ref, base_ref, merged_path,
                    summary, notes)


def _report(req: Request, rec: status.StageRecorder, prep: Prepared,
            comparisons: list[scoring.Comparison], meter: scoring.Throughput) -> dict[str, Any]:
    """Write metrics.json, eval_chart.png and verdict.json; fill the stage record."""
    prof, loaded = prep.profile, prep.suites
    metrics_doc = {
        "schema_version": 1,
        "profile": {"name": prof.name, "path": str(prof.path), "sha256": prof.sha256},
        "adapter": prep.merge_summary,
        "base_model": {"path": prep.base.path, "sha256": prep.base.sha256},
        "eval_strategy": prof.runtime.eval_strategy,
        "tokenizer": suites.tokenizer_name(),
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED,
                      "statistic": "relative_change"},
        "suites": {s.name: _suite_entry(s, c) for s, c in zip(loaded, comparisons, strict=True)},
        "throughput": {"tokens_scored": meter.tokens, "seconds": round(meter.seconds, 3),
                       "tokens_per_s": round(meter.tokens_per_s, 1),
                       "threads": scoring.threads_in_use()},
        "notes": prep.notes,
    }
    metrics_path = req.out / METRICS
    schemas.check(metrics_doc, "eval_metrics", str(metrics_path))
    atomic.write_json(metrics_path, metrics_doc)
    results = [verdict.SuiteResult(s.name, s.kind, c.base_loss, c.adapted_loss,
                                   c.relative_change, s.data_sha256, c.tokens)
               for s, c in zip(loaded, comparisons, strict=True)]
    judged = verdict.judge(results, req.thresholds,
                           prep.baseline["suites"] if prep.baseline else None)
    verdict_doc = verdict.document(
        judged, req.thresholds, adapter_sha256=prep.adapter.sha256,
        metrics_sha256=sha256_file(metrics_path), profile=prof.name, created_at=status.utc_now())
    # No release version exists yet: the title names the candidate by its run (or folder).
    run_id = settings.env_str("PEFTFLOW_RUN_ID")
    run = f"run {run_id}" if run_id else f"folder {req.out.name}"
    chart.render(req.out / CHART, chart.changes(metrics_doc, verdict_doc), req.thresholds,
                 f"{prof.name} candidate ({run}): {req.adapter.name} vs base")
    verdict_path = req.out / VERDICT
    schemas.check(verdict_doc, "verdict", str(verdict_path))
    atomic.write_json(verdict_path, verdict_doc)

    rec.add_output("metrics", metrics_path)
    rec.add_output("verdict", verdict_path)
    rec.add_output("eval_chart", req.out / CHART)
    if req.write_merged:
        rec.add_output("merged_model", req.write_merged)
    rec.metrics.update({
        "verdict": verdict_doc["verdict"],
        "suites": {s.name: {"kind": s.kind.value, "tokens": c.tokens, "base_loss": c.base_loss,
                            "adapted_loss": c.adapted_loss, "relative_change": c.relative_change}
                   for s, c in zip(loaded, comparisons, strict=True)},
        "tokens_per_s": round(meter.tokens_per_s, 1),
        "seconds": round(meter.seconds, 3),
    })
    return verdict_doc


def _suite_entry(suite: suites.Suite, c: scoring.Comparison) -> dict[str, Any]:
    def finite(x: float) -> float | None:
        return x if x != float("inf") else None

    return {
        "kind": suite.kind.value, "file": str(suite.path), "file_sha256": suite.sha256,
        "data_sha256": suite.data_sha256, "ctx_len": suite.ctx_len,
        "documents": c.documents, "tokens": c.tokens,
        "base_loss": c.base_loss, "adapted_loss": c.adapted_loss,
        "base_ppl": finite(c.base_ppl), "adapted_ppl": finite(c.adapted_ppl),
        "relative_change": c.relative_change, "ci95": list(c.ci95),
    }


def _score_all(label: str, model_path: Path, prep: Prepared, threads: int,
               meter: scoring.Throughput) -> list[list[scoring.DocScore]]:
    """Score every suite with one model (one model in memory at a time)."""
    model = scoring.load_model(model_path, prep.profile.runtime.eval_strategy, threads)
    progress = Progress("evaluate_adapter")
    results = []
    for docs in prep.documents:
        total, pace = len(docs.windows), Rate(docs.tokens)

        def report(done: int, tokens: int, force: bool = False, docs: Documents = docs,
                   total: int = total, pace: Rate = pace) -> None:
            pace.update(tokens)
            progress.maybe(lambda _: f"{label} model, suite {docs.suite.name}: {done}/{total} "
                           f"documents, {tokens} tokens, {pace.per_second() or 0:.0f} tokens/s, "
                           f"ETA {pace.eta()}", force)

        with meter:
            scores = scoring.score_windows(model, docs.windows, report)
        meter.tokens += docs.tokens
        report(total, docs.tokens, force=True)
        results.append(scores)
    del model
    gc.collect()
    return results
