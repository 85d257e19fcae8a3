"""The cost curve: how quantgate's time and peak memory grow with tensor count, weight size and
vocabulary size, next to the anchor library on the same files.

    .venv/bin/python benchmarks/bench_curve.py [--runs 5] [--anchor-runs 1] [--quick]

Every point is a file generated into benchmarks/.work/curve/ (gitignored) whose tensor data is a
sparse hole, so a 200 GB file costs no disk; every measurement is a fresh process, as a CI step pays
it: `quantgate guard <format>-dtypes FILE` (the CLI, imports and report included) against the
anchor's open-and-list script (gguf-py's `GGUFReader`, `safetensors.safe_open` with every slice's
dtype and shape), whole-process CPU time and peak RSS (from a small wrapper's RUSAGE_CHILDREN).
GGUF files come from bench_gguf.generate (gguf-py's own writer) with its Llama-3.2-1B shapes scaled;
the anchors' scripts are bench_gguf's and bench_safetensors'.

Series: tensor count (100 / 1,000 / 10,000 / 50,000 tensors, 32k SentencePiece-style vocabulary),
weight size at a fixed 1,000 tensors (hidden 512 / 2048 / 8192), and GGUF vocabulary size
(32k / 128k / 256k tokens with Llama-3's merges-per-token ratio). Prints a `## curve` section.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import struct
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_gguf  # noqa: E402  (beside this script: the generator and gguf-py's script)
import bench_safetensors  # noqa: E402
from results import headline, least_cost, least_cost_interleaved  # noqa: E402

ROOT = HERE.parent
WORK = HERE / ".work" / "curve"
LLAMA3_MERGES_PER_TOKEN = bench_gguf.MERGES / bench_gguf.VOCAB


@contextlib.contextmanager
def patched(module: object, **values: object) -> Iterator[None]:
    """Scale bench_gguf's module-level shapes for one generate() call."""
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def gguf_file(blocks: int, hidden: int, vocab: int, merges: int) -> Path:
    path = WORK / f"b{blocks}-h{hidden}-v{vocab}-m{merges}.gguf"
    if not path.exists():
        partial = path.with_suffix(".partial")  # renamed when complete: an interrupted run leaves no bad file
        with patched(bench_gguf, BIG=partial, **gguf_shape(blocks, hidden), VOCAB=vocab, MERGES=merges):
            bench_gguf.generate()
        partial.rename(path)
    return path


def gguf_shape(blocks: int, hidden: int) -> dict[str, int]:
    return {"BLOCKS": blocks, "HIDDEN": hidden, "FFN": 4 * hidden, "HEAD_DIM": hidden // bench_gguf.HEADS}


def gguf_data_bytes(blocks: int, hidden: int, vocab: int) -> int:
    """The data section generate() leaves as a hole: Q4_0 2-D weights, F32 norms, 32-byte aligned."""
    with patched(bench_gguf, **gguf_shape(blocks, hidden), VOCAB=vocab):
        shapes = bench_gguf.tensor_shapes()
    total = 0
    for _, shape in shapes:
        nbytes = shape[0] * 4 if len(shape) == 1 else shape[0] * shape[1] // 32 * 18
        total += nbytes + (-nbytes % 32)
    return total


def gguf_tensors(blocks: int) -> int:
    with patched(bench_gguf, BLOCKS=blocks):
        return len(bench_gguf.tensor_shapes())


def safetensors_entries(layers: int, hidden: int, vocab: int = 32_000) -> list[tuple[str, list[int]]]:
    """Llama-shaped F16 checkpoint: embeddings, 9 tensors per layer, final norm and lm_head."""
    return bench_safetensors.llama_entries(layers, hidden, 4 * hidden, vocab)


def safetensors_file(layers: int, hidden: int) -> Path:
    path = WORK / f"l{layers}-h{hidden}.safetensors"
    if path.exists():
        return path
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in safetensors_entries(layers, hidden):
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)  # a sparse hole: no data blocks written
    partial.rename(path)
    return path


def metadata_bytes(path: Path, fmt: str) -> int:
    """Bytes before the tensor data: the part of the file the readers parse."""
    if fmt == "safetensors":
        with open(path, "rb") as handle:
            return 8 + struct.unpack("<Q", handle.read(8))[0]
    parts = name_parts(path)
    return path.stat().st_size - gguf_data_bytes(parts["b"], parts["h"], parts["v"])


def name_parts(path: Path) -> dict[str, int]:
    """b11-h2048-v32000-m0 -> {"b": 11, "h": 2048, ...}"""
    return {p[0]: int(p[1:]) for p in path.stem.split("-")}


def anchor_command(fmt: str, path: Path) -> list[str]:
    if fmt == "gguf":
        code = bench_gguf.CHILD["gguf-py"].format(path=str(path))
        return [sys.executable, "-c", code]
    code = bench_safetensors.TIMER.format(body=textwrap.dedent(bench_safetensors.CHILD["safe_open(numpy)"]))
    return [sys.executable, "-c", code, str(path), "1"]


def quantgate_command(fmt: str, path: Path) -> list[str]:
    return [sys.executable, "-m", "quantgate", "-q", "guard", f"{fmt}-dtypes", str(path)]


def checker(cmd: list[str], check_status: bool = False) -> Callable[[dict], None]:
    """A run of `cmd` must exit 0 or, with check_status, print a guard verdict."""

    def check(r: dict) -> None:
        if check_status:
            found = re.search(r'"status":\s*"(\w+)"', r["stdout"][:3000])  # the guard result's own, near the top
            status = found.group(1) if found else None
            if status not in ("PASS", "WARN", "FAIL"):
                raise SystemExit(f"{' '.join(cmd)}: status {status} rc {r['rc']}\n{r['stdout'][:3000]}\n{r['stderr']}")
        elif r["rc"] != 0:
            raise SystemExit(f"{' '.join(cmd)}: exit {r['rc']}\n{r['stderr']}")

    return check


def measure(cmd: list[str], runs: int, check_status: bool = False) -> dict[str, float]:
    """results.least_cost of `cmd` (see checker)."""
    return least_cost(cmd, runs, cwd=WORK, check=checker(cmd, check_status))


def measure_pair(fmt: str, path: Path, runs: int) -> tuple[dict[str, float], dict[str, float]]:
    """quantgate and the anchor on one file, their runs in turn (results.least_cost_interleaved)."""
    q, a = quantgate_command(fmt, path), anchor_command(fmt, path)
    best = least_cost_interleaved({"q": q, "a": a}, runs, cwd=WORK,
                                  checks={"q": checker(q, check_status=True), "a": checker(a)})
    return best["q"], best["a"]


def fmt_size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def ratio(a: float, b: float) -> str:
    r = a / b
    return f"{r:,.0f}×" if r >= 10 else f"{r:.1f}×"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5,
                        help="runs per point of quantgate and of safe_open (the least kept)")
    parser.add_argument("--anchor-runs", type=int, default=1, help="gguf-py runs per point (they take minutes)")
    parser.add_argument("--quick", action="store_true", help="the two smallest points of each series only")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    counts = [11, 111, 1111, 5555]  # blocks/layers: ~100, 1,000, 10,000, 50,000 tensors
    hiddens = [512, 2048, 8192]
    vocabs = [32_000, 128_256, 256_000]
    if args.quick:
        counts, hiddens, vocabs = counts[:2], hiddens[:2], vocabs[:2]
    points: list[tuple[str, str, Path]] = []  # (series, format, file)
    for blocks in counts:
        points.append(("tensors", "gguf", gguf_file(blocks, 2048, 32_000, 0)))
        points.append(("tensors", "safetensors", safetensors_file(blocks, 2048)))
    for hidden in hiddens:
        points.append(("weights", "gguf", gguf_file(111, hidden, 32_000, 0)))
        points.append(("weights", "safetensors", safetensors_file(111, hidden)))
    for vocab in vocabs:
        points.append(("vocab", "gguf", gguf_file(16, 2048, vocab, round(vocab * LLAMA3_MERGES_PER_TOKEN))))

    bare = measure([sys.executable, "-c", "pass"], 3)
    rows = []
    for series, fmt, path in points:
        print(f"curve: {series} {path.name}", file=sys.stderr, flush=True)
        if fmt == "safetensors":
            # safe_open takes well under a second: as many runs as quantgate, in turn with them, least
            # kept, so the noise of the shared cores cannot favour either side
            q, a = measure_pair(fmt, path, args.runs)
        else:
            q = measure(quantgate_command(fmt, path), args.runs, check_status=True)
            a = measure(anchor_command(fmt, path), args.anchor_runs)
        rows.append((series, fmt, path, q, a))

    anchors = {"gguf": "gguf-py GGUFReader", "safetensors": "safetensors.safe_open"}
    print("## curve\n")
    print(
        "How the cost grows. Each point is a fresh process, as a CI step pays it: `quantgate guard "
        "<format>-dtypes FILE` (CLI, imports, full guard and JSON report) vs the anchor opening the same file "
        f"and listing every tensor ({anchors['gguf']}; {anchors['safetensors']}(numpy) with each slice's "
        "dtype and shape). Tensor data is a sparse hole. Time is the whole process's CPU time (user + system: "
        "the 2 cores are shared with other jobs, so wall time carries their noise; nothing here waits on I/O), "
        f"least of {args.runs} runs for quantgate and for safe_open (taken in turn), of {args.anchor_runs} for "
        "gguf-py (minutes each, and 12-20x slower, far beyond the noise); memory is the peak "
        f"RSS. A bare `python -c pass` takes {bare['s']:.3f} s and {bare['mib']:.0f} MiB. Ratios are anchor / "
        "quantgate (higher is better for quantgate).\n"
    )
    titles = {
        "tensors": "Tensor count (Llama-shaped blocks, hidden 2048, 32k vocabulary)",
        "weights": "Weight size at a fixed tensor count (111 blocks, ~1,000 tensors, 32k vocabulary)",
        "vocab": "GGUF vocabulary size (Llama-3.2-1B shape, 16 blocks, tokens + scores + types + merges)",
    }
    for series, title in titles.items():
        picked = [r for r in rows if r[0] == series]
        if not picked:
            continue
        print(f"### {title}\n")
        print("| format | tensors | vocab | metadata | file (sparse) | quantgate | quantgate RSS | anchor | "
              "anchor RSS | time ratio | memory ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for _, fmt, path, q, a in picked:
            tensors, vocab = describe(fmt, path)
            print(f"| {fmt} | {tensors:,} | {vocab} | {fmt_size(metadata_bytes(path, fmt))} | "
                  f"{fmt_size(path.stat().st_size)} | {q['s']:.2f} s | {q['mib']:.0f} MiB | {a['s']:.2f} s | "
                  f"{a['mib']:.0f} MiB | {ratio(a['s'], q['s'])} | {ratio(a['mib'], q['mib'])} |")
        print()
    print(summary(rows, bare))
    for fmt in ("gguf", "safetensors"):  # the largest tensor count, for the headline table
        last = [r for r in rows if r[0] == "tensors" and r[1] == fmt][-1:]
        for _, _, path, q, a in last:
            print(headline(fmt.upper() if fmt == "gguf" else fmt, f"{describe(fmt, path)[0]:,} tensors (CPU time)",
                           q["s"], q["mib"], anchors[fmt], a["s"], a["mib"]))
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


def describe(fmt: str, path: Path) -> tuple[int, str]:
    parts = name_parts(path)
    if fmt == "gguf":
        merges = f" + {parts['m'] / 1000:,.0f}k merges" if parts["m"] else ""
        return gguf_tensors(parts["b"]), f"{parts['v'] / 1000:,.0f}k{merges}"
    return len(safetensors_entries(parts["l"], parts["h"])), "—"


def summary(rows: list, bare: dict[str, float]) -> str:
    """One sentence per format and series: the growth from the first point to the last."""
    out = []
    for series in ("tensors", "weights", "vocab"):
        for fmt in ("gguf", "safetensors"):
            picked = [r for r in rows if r[0] == series and r[1] == fmt]
            if len(picked) < 2:
                continue
            (_, _, p0, q0, a0), (_, _, p1, q1, a1) = picked[0], picked[-1]
            m0, m1 = metadata_bytes(p0, fmt), metadata_bytes(p1, fmt)
            grow = (
                f"file {fmt_size(p0.stat().st_size)} → {fmt_size(p1.stat().st_size)}"
                if series == "weights"
                else f"metadata {fmt_size(m0)} → {fmt_size(m1)} ({m1 / m0:,.0f}×)"
            )
            if series == "tensors":
                n = describe(fmt, p1)[0] - describe(fmt, p0)[0]
                unit, per = "per tensor", lambda q0, q1, n=n: (
                    f"{(q1['s'] - q0['s']) / n * 1e6:,.0f} µs and {(q1['mib'] - q0['mib']) * 1024 / n:,.1f} KiB")
            elif series == "vocab":
                mb = (m1 - m0) / 1e6
                unit, per = "per MB of metadata", lambda q0, q1, mb=mb: (
                    f"{(q1['s'] - q0['s']) / mb * 1e3:,.0f} ms and {(q1['mib'] - q0['mib']) / mb:,.1f} MiB")
            else:
                unit, per = "", None
            slope = f" Growth {unit}: quantgate {per(q0, q1)}, anchor {per(a0, a1)}." if per else ""
            out.append(
                f"- {fmt}, {series}: {grow}; quantgate {q0['s']:.2f} → {q1['s']:.2f} s and "
                f"{q0['mib'] - bare['mib']:.0f} → {q1['mib'] - bare['mib']:.0f} MiB above a bare interpreter; "
                f"anchor {a0['s']:.2f} → {a1['s']:.2f} s and {a0['mib'] - bare['mib']:.0f} → "
                f"{a1['mib'] - bare['mib']:.0f} MiB.{slope}"
            )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
