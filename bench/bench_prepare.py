"""Benchmark: prepare_dataset vs the reference path (TRIE_TOKENIZER + a json2binidx-style writer).

Builds a JSONL of at least --mb MB from shipped text (LAMBADA passages paired with Python
documentation paragraphs, every pair distinct, shuffled), registers it, then runs in one go:
  - the project's stage, `scripts/prepare_dataset.sh`, at that size and at twice that size;
  - the reference path at that size: per line json.loads, TRIE_TOKENIZER.encode, + EOD,
    one numpy array per document written to .bin, sizes kept in a list, then the .idx;
  - with --with-rust, the stage once more with the Rust fallback tokenizer.
Each run is a child process; its wall time, throughput and peak memory (peak summed RSS of
its process tree, sampled from /proc every 50 ms, and the largest single process's
ru_maxrss), CPU time and MB per CPU-second are printed, and the two outputs are compared byte for byte.

    .venv/bin/python bench/bench_prepare.py [--mb 50] [--workers N] [--keep DIR] [--with-rust]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LAMBADA = Path(os.environ.get("PEFTFLOW_LAMBADA", ROOT / "configs/eval/data/lambada_test.jsonl"))
PYDOC = [ROOT / "data/smoke/pydoc-docs/v1/train.jsonl", ROOT / "configs/eval/data/pydoc_heldout.jsonl"]


def _texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def build_jsonl(path: Path, megabytes: float, seed: int = 1) -> int:
    """Distinct documents (LAMBADA passage i + pydoc paragraph j) until the size is reached."""
    lam, doc = _texts(LAMBADA), [t for p in PYDOC for t in _texts(p)]
    import numpy as np

    target, size, count = megabytes * 1e6, 0, 0
    with open(path, "w", encoding="utf-8") as out:
        for k in np.random.default_rng(seed).permutation(len(lam) * len(doc)).tolist():
            i, j = k % len(lam), k // len(lam)
            line = json.dumps({"text": f"{lam[i]}\n\n{doc[j]}"}, ensure_ascii=False) + "\n"
            out.write(line)
            size += len(line.encode("utf-8"))
            count += 1
            if size >= target:
                break
    return count


def reference(jsonl: str, prefix: str) -> None:
    """The reference path, the way json2binidx works (single process, Python loops)."""
    import numpy as np

    from peftflow.dataset import tokenizer

    tok = tokenizer.reference()
    sizes: list[int] = []
    with open(jsonl, encoding="utf-8") as src, open(f"{prefix}.bin", "wb") as bin_out:
        for line in src:
            ids = [*tok.encode(json.loads(line)["text"]), 0]
            bin_out.write(np.array(ids, dtype=np.uint16).tobytes())
            sizes.append(len(ids))
    pointers, offset = [], 0
    for n in sizes:
        pointers.append(offset)
        offset += n * 2
    with open(f"{prefix}.idx", "wb") as idx:
        idx.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8))
        idx.write(struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(sizes) + 1))
        idx.write(np.array(sizes, dtype=np.int32).tobytes())
        idx.write(np.array(pointers, dtype=np.int64).tobytes())
        idx.write(np.arange(len(sizes) + 1, dtype=np.int64).tobytes())


def compare_tokenizers(jsonl: Path, megabytes: float = 2.0) -> None:
    """CPU MB/s of the reference and of both Rust packages on the first 2 MB of the bench text."""
    import importlib

    from peftflow.dataset import tokenizer

    texts, size = [], 0
    with open(jsonl, encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1].encode("utf-8"))
            if size >= megabytes * 1e6:
                break
    ref = tokenizer.reference()
    t0 = time.process_time()
    expected = [ref.encode(t) for t in texts]
    ref_rate = size / 1e6 / (time.process_time() - t0)
    print(f"TRIE_TOKENIZER (reference): {ref_rate:.2f} MB/s (CPU time) on {size / 1e6:.1f} MB")
    for package in ("peftflow.dataset._worldtok", "pyrwkv_tokenizer", "rwkv_tokenizer"):
        try:
            module = importlib.import_module(package)
        except ModuleNotFoundError:
            print(f"{package}: not installed")
            continue
        make = getattr(module, "Tokenizer", None) or module.WorldTokenizer
        tok = make(str(tokenizer.vocab_path()))
        same = [tok.encode(t) for t in texts] == expected
        rates = []
        for _ in range(3):
            t0 = time.process_time()
            for text in texts:
                tok.encode(text)
            rates.append(size / 1e6 / (time.process_time() - t0))
        print(f"{package}: {' '.join(f'{r:.1f}' for r in rates)} MB/s (CPU time), "
              f"identical to TRIE_TOKENIZER on these {len(texts)} documents: {same}")


def _tree_pss(pid: int) -> int:
    """Summed proportional set size (bytes) of a process and its descendants: shared pages
    (the tokenizer that forked workers share with the parent) are counted once overall."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue
    return total


def measured(argv: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run argv in a fresh wrapper process: wall time, CPU time, peak tree PSS, ru_maxrss."""
    wrapper = ("import resource,subprocess,sys;r=subprocess.run(sys.argv[1:]).returncode;"
               "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
               "print(u.ru_maxrss,u.ru_utime+u.ru_stime);sys.exit(r)")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    peak = [0]

    def poll() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_pss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=poll)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]}... exited {proc.returncode}")
    maxrss, cpu = out.decode().split()[-2:]
    return {"wall_s": wall, "cpu_s": float(cpu), "tree_pss_mb": peak[0] / 2**20,
            "max_proc_rss_mb": int(maxrss) / 1024}


def _line(label: str, run: dict[str, float]) -> str:
    return (f"{label:9s} {run['mb']:6.1f} MB {int(run['docs']):6d} docs  {run['wall_s']:6.2f} s "
            f"{run['mb_s']:6.2f} MB/s  CPU {run['cpu_s']:6.2f} s ({run['mb'] / run['cpu_s']:5.2f} "
            f"MB per CPU-s)  peak PSS {run['tree_pss_mb']:5.0f} MB  largest RSS "
            f"{run['max_proc_rss_mb']:4.0f} MB")


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="size of the JSONL in MB (>= 50)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--keep", help="build in this folder and keep it")
    ap.add_argument("--skip-reference", action="store_true", help="only run the stage")
    ap.add_argument("--compare-tokenizers", action="store_true",
                    help="also time the tokenizers alone (CPU MB/s on 2 MB)")
    ap.add_argument("--with-rust", action="store_true",
                    help="also run the stage with PEFTFLOW_TOKENIZER=rust (the fallback)")
    ap.add_argument("--reference", nargs=2, metavar=("JSONL", "PREFIX"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        reference(*args.reference)
        return 0
    from peftflow.dataset.manifest import register_dataset

    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench-prepare-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          "(shared with other jobs: numbers vary run to run)")
    results: dict[str, dict[str, float]] = {}
    for label, mb in (("stage", args.mb), ("stage_2x", 2 * args.mb)):
        jsonl = folder / f"bench_{mb:g}mb.jsonl"
        if jsonl.exists():  # --keep folder from an earlier run: the build is deterministic
            with open(jsonl, "rb") as handle:
                docs = sum(1 for _ in handle)
        else:
            docs = build_jsonl(jsonl, mb)
        size = jsonl.stat().st_size
        manifest, _ = register_dataset(jsonl, "bench", f"{mb:g}mb")
        out = folder / f"out_{label}"
        run = measured([str(ROOT / "scripts/prepare_dataset.sh"), "--manifest", str(manifest),
                        "--out", str(out), "--max-duplicate-fraction", "1",
                        "--workers", str(args.workers)])
        run.update(mb=size / 1e6, docs=docs, mb_s=size / 1e6 / run["wall_s"])
        results[label] = run
        print(_line(label, run), flush=True)
        if label == "stage" and args.compare_tokenizers:
            compare_tokenizers(jsonl)
        if label == "stage" and args.with_rust:  # the stage on a machine without a C compiler
            rust = measured([str(ROOT / "scripts/prepare_dataset.sh"), "--manifest",
                             str(manifest), "--out", str(folder / "out_rust"),
                             "--max-duplicate-fraction", "1", "--workers", str(args.workers)],
                            env={"PEFTFLOW_TOKENIZER": "rust"})
            rust.update(mb=size / 1e6, docs=docs, mb_s=size / 1e6 / rust["wall_s"])
            results["stage_rust"] = rust
            print(_line("stage_rust", rust), flush=True)
        if label == "stage" and not args.skip_reference:
            prefix = folder / "reference_text_document"
            ref = measured([sys.executable, __file__, "--reference", str(jsonl), str(prefix)])
            ref.update(mb=size / 1e6, docs=docs, mb_s=size / 1e6 / ref["wall_s"])
            results["reference"] = ref
            print(_line("reference", ref), flush=True)
            same = all(_sha(f"{prefix}{s}") == _sha(f"{out}/train_text_document{s}")
                       for s in (".bin", ".idx"))
            print(f"outputs byte-identical to the reference: {same}")
            if not same:
                return 1
    one, two = results["stage"], results["stage_2x"]
    marginal = (two["mb"] - one["mb"]) / max(two["wall_s"] - one["wall_s"], 1e-9)
    print(f"stage marginal rate (extra {two['mb'] - one['mb']:.0f} MB / extra time): "
          f"{marginal:.1f} MB/s")
    if "reference" in results:
        ref = results["reference"]
        print(f"ratio stage/reference: {one['mb_s'] / ref['mb_s']:.1f}x wall-clock throughput "
              f"(target >= 10x); {ref['cpu_s'] / one['cpu_s']:.1f}x less CPU time")
    if "stage_rust" in results:
        print(f"ratio stage/stage with the Rust tokenizer: "
              f"{one['mb_s'] / results['stage_rust']['mb_s']:.1f}x wall-clock throughput")
    print(f"stage peak PSS {one['tree_pss_mb']:.0f} MB at {one['mb']:.0f} MB vs "
          f"{two['tree_pss_mb']:.0f} MB at {two['mb']:.0f} MB of input")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
