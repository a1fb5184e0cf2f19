"""Curation throughput on synthetic rows (rows per second), next to a plain exact-dedup baseline.

Writes ``--rows`` synthetic chat rows (a 15-40-word user turn and a 1-5-word answer; 10% exact repeats,
5% one-word edits of the question, 1% containing an evaluation row) to a JSONL file, then times on that file:

- baseline: read the JSONL, ``json.loads`` each line, keep a set of SHA-1 hashes of the raw text;
- `curate()` with exact dedup only (normalised text, spooled output, mixture write-back);
- `curate()` with the defaults: decontamination against 1,000 evaluation rows, quality filters, exact and
  MinHash-LSH near dedup (128 permutations).

Run with one thread, as the figures in README were:

    OMP_NUM_THREADS=1 python benchmarks/curation_throughput.py [--rows 100000] [--out results.txt]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from posttrain.config.curate import CurateConfig
from posttrain.curation.curate import curate

WORDS = [a + b + c for a in "bdfgklmnprstvz" for b in "aeiou" for c in ("", "n", "r", "s", "l", "x")]


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def write_rows(folder: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """The training file and an evaluation file of 1,000 rows (questions)."""
    rng = random.Random(seed)
    evaluation = [sentence(rng, 10, 25) for _ in range(1000)]
    rows: list[tuple[str, str]] = []  # (question, answer)
    for _ in range(count):
        draw = rng.random()
        if rows and draw < 0.10:
            text, answer = rng.choice(rows)
        elif rows and draw < 0.15:  # one word of the question replaced, same answer
            question, answer = rng.choice(rows)
            words = question.split()
            words[rng.randrange(len(words))] = rng.choice(WORDS)
            text = " ".join(words)
        elif draw < 0.16:
            text, answer = sentence(rng, 5, 10) + " " + rng.choice(evaluation), sentence(rng, 1, 5)
        else:
            text, answer = sentence(rng, 15, 40), sentence(rng, 1, 5)
        rows.append((text, answer))
    train, heldout = folder / "train.jsonl", folder / "eval.jsonl"
    with train.open("w") as out:
        for text, answer in rows:
            out.write(json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}) + "\n")
    with heldout.open("w") as out:
        for text in evaluation:
            out.write(json.dumps({"prompt": text, "completion": "x"}) + "\n")
    return train, heldout


def baseline(path: Path) -> tuple[float, int]:
    """Rows per second of a plain exact dedup: parse each line, hash the raw text, keep the new ones."""
    begin = time.perf_counter()
    seen: set[bytes] = set()
    kept = 0
    with path.open() as handle:
        for line in handle:
            row = json.loads(line)
            digest = hashlib.sha1("\n".join(m["content"] for m in row["messages"]).encode()).digest()
            if digest not in seen:
                seen.add(digest)
                kept += 1
    return kept, time.perf_counter() - begin


def timed_curate(train: Path, heldout: Path, folder: Path, full: bool) -> tuple[dict, float]:
    fields = {"name": "bench", "kind": "curate", "sources": [{"data": {"source": str(train)}}]}
    if full:
        fields["decontaminate"] = {"sets": [{"name": "eval", "data": {"source": str(heldout)}}]}
    else:
        fields.update(decontaminate={"enabled": False}, dedup={"near": False},
                      quality={"repetition": False, "min_words": 0, "min_alphanumeric": 0})
    begin = time.perf_counter()
    summary = curate(CurateConfig.model_validate(fields), folder, 0, folder / ("full" if full else "exact"))
    return summary, time.perf_counter() - begin


def cpu_name() -> str:
    """The CPU model (figures differ between the machines this runs on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None, help="also write the lines printed to this file")
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    lines = [f"python {platform.python_version()}, {cpu_name()}, {os.cpu_count()} cores, OMP_NUM_THREADS={threads}, "
             f"load average {os.getloadavg()[0]:.1f}, {args.rows} rows"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, heldout = write_rows(folder, args.rows)
        kept, seconds = baseline(train)
        lines.append(f"baseline exact dedup (json + sha1 of raw text): {args.rows / seconds:,.0f} rows/s ({kept} kept)")
        summary, seconds = timed_curate(train, heldout, folder, full=False)
        lines.append(f"curate, exact dedup only: {args.rows / seconds:,.0f} rows/s ({summary['rows_written']} kept)")
        summary, seconds = timed_curate(train, heldout, folder, full=True)
        removed = ", ".join(f"{rule} {count}" for rule, count in summary["removed"].items() if count)
        lines.append(f"curate, defaults (decontamination, quality, exact + near dedup): {args.rows / seconds:,.0f} rows/s "
                     f"({summary['rows_written']} kept; removed: {removed})")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
