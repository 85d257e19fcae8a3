"""The hostile-input campaign (`make fuzz`): mutate valid files of every format and feed them to the
real readers, with a time and memory bound per input.

Mutations: bit flips, stamped 0xFF words, huge counts stamped at aligned offsets, huge protobuf
varints, truncations, insertions, duplicated chunks and splices of two files of the same format.
Every input must end as findings or a clean read: an exception, a timeout or a memory blow-up is a
defect, and the input is kept under fixtures/fuzz-regressions/ so `tests/test_fuzz_regressions.py`
replays it forever after.

    python benchmarks/fuzz.py --seconds 600 --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from quantgate.formats import MODEL_FORMATS, read_inventory  # noqa: E402
from quantgate.formats.sniff import sniff  # noqa: E402
from quantgate.guards.base import GuardTimeout, time_budget  # noqa: E402

REGRESSIONS = ROOT / "fixtures" / "fuzz-regressions"
WORK = ROOT / "benchmarks" / ".work" / "fuzz"
MEMORY_LIMIT = 2 << 30  # per worker: a reader that needs more on a small file is a defect
TIME_LIMIT_S = 5.0
HEADING = "## Hostile-input campaign (`make fuzz`)"
HANG_S = 60.0  # no result from any worker for this long: a reader ignored its time budget
KEEP_PER_FORMAT = 20  # defects kept per format and run (each one verified); the count goes on
EXT = {"gguf": ".gguf", "onnx": ".onnx", "safetensors": ".safetensors", "pte": ".pte"}
HUGE = [0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 1 << 62, (1 << 64) - 1, 5_000_000, 1 << 31]


def seeds() -> dict[str, list[Path]]:
    """Valid fixture files of every format (the broken ones are already hostile)."""
    out: dict[str, list[Path]] = {fmt: [] for fmt in MODEL_FORMATS}
    for path in sorted((ROOT / "fixtures").rglob("*")):
        if not path.is_file() or "broken" in path.parts or "fuzz-regressions" in path.parts:
            continue
        if path.stat().st_size > 4 << 20:
            continue
        fmt = sniff(path).format
        if fmt in out:
            out[fmt].append(path)
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mutate(data: bytes, rng: random.Random, other: bytes = b"") -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(9 if other else 8)
        n = len(buf)
        if n == 0:
            break
        if kind == 0:  # bit flip
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # 0xFF word
            i = rng.randrange(max(1, n - 4)) & ~3
            buf[i : i + 4] = b"\xff\xff\xff\xff"
        elif kind == 2:  # a huge count at an aligned offset (most counts are u32/u64 at 4/8 alignment)
            width = rng.choice((4, 8))
            i = rng.randrange(max(1, n - width)) & ~(width - 1)
            buf[i : i + width] = (rng.choice(HUGE) & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        elif kind == 3:  # truncation
            del buf[rng.randrange(n) :]
        elif kind == 4:  # insertion
            i = rng.randrange(n)
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 5:  # duplicated chunk
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 64))
            buf[j:j] = buf[i:j]
        elif kind == 6:  # header-area byte (most structure lives in the first few KiB)
            i = rng.randrange(min(n, 4096))
            buf[i] = rng.randrange(256)
        elif kind == 7:  # a huge protobuf varint (ONNX lengths and counts), replacing one of the same size
            i = rng.randrange(n)
            old_len = next((k + 1 for k in range(min(10, n - i)) if not buf[i + k] & 0x80), 1)
            buf[i : i + old_len] = _varint(rng.choice(HUGE))
        else:  # splice: the head of this file with the tail of another file of the same format
            i, j = rng.randrange(n), rng.randrange(len(other))
            buf[i:] = other[j:]
    return bytes(buf)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _reset_peak_rss() -> None:
    """Start this input's peak RSS afresh (Linux: `5` in clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """Bytes: the worker's VmHWM since the last reset, else its lifetime maximum."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_one(task: tuple[str, str, bytes]) -> dict:
    """Read one mutated input in this worker; classify the outcome."""
    fmt, name, data = task
    path = WORK / f"{os.getpid()}{EXT[fmt]}"
    path.write_bytes(data)
    _reset_peak_rss()
    started = time.perf_counter()
    outcome, detail, findings = "ok", "", 0
    try:
        with time_budget(TIME_LIMIT_S):
            inventory = read_inventory(str(path), fmt)
        if inventory is not None:
            findings = len(inventory.structural_findings) + len(inventory.semantic_findings)
            outcome = "findings" if findings else "ok"
    except GuardTimeout:
        outcome, detail = "timeout", f"over {TIME_LIMIT_S:g} s"
    except MemoryError:
        outcome, detail = "memory", f"over {MEMORY_LIMIT >> 20} MiB"
    except Exception as exc:  # the defect this campaign hunts
        outcome = "exception"
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:300]
    elapsed = time.perf_counter() - started
    rss = _peak_rss()
    path.unlink(missing_ok=True)  # what is left in WORK is in flight: a hung worker's input
    return {
        "fmt": fmt,
        "seed": name,
        "outcome": outcome,
        "detail": detail,
        "findings": findings,
        "seconds": elapsed,
        "rss": rss,
        "data": data if outcome in ("exception", "timeout", "memory") else b"",
    }


def run(seconds: float, jobs: int, seed: int, formats: set[str] | None = None) -> dict[str, dict]:
    WORK.mkdir(parents=True, exist_ok=True)
    for stale in WORK.glob("*"):
        stale.unlink()
    rng = random.Random(seed)
    corpus = {
        fmt: [(p, p.read_bytes()) for p in paths]
        for fmt, paths in seeds().items()
        if paths and (not formats or fmt in formats)
    }
    stats: dict[str, dict] = {
        fmt: {
            "tried": 0,
            "findings": 0,
            "ok": 0,
            "exception": 0,
            "timeout": 0,
            "memory": 0,
            "slowest": (0.0, ""),
            "rss": 0,
            "seeds": len(files),
            "kept": [],
            "unreproduced": 0,
        }
        for fmt, files in corpus.items()
    }
    deadline = time.monotonic() + seconds
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs, initializer=_limit_memory, maxtasksperchild=500) as pool:
        while time.monotonic() < deadline:
            batch = []
            for fmt, files in corpus.items():
                for _ in range(20):
                    path, data = rng.choice(files)
                    batch.append((fmt, path.name, mutate(data, rng, rng.choice(files)[1])))
            results = pool.imap_unordered(check_one, batch)  # chunksize 1: only its iterator has a timeout
            while True:
                try:
                    # the per-input budget is a signal; a reader stuck where signals wait (native code)
                    # would stall the pool: past this backstop, the inputs in flight are kept as hangs
                    result = results.next(timeout=HANG_S)
                except StopIteration:
                    break
                except multiprocessing.TimeoutError:
                    pool.terminate()
                    for stuck in WORK.glob("*"):
                        fmt = next((f for f, e in EXT.items() if stuck.name.endswith(e)), None)
                        if fmt in stats:
                            stats[fmt]["tried"] += 1
                            stats[fmt]["timeout"] += 1
                            stats[fmt]["kept"].append(keep(fmt, stuck.read_bytes(), "hang", f"over {HANG_S:g} s"))
                    return stats
                s = stats[result["fmt"]]
                s["tried"] += 1
                s[result["outcome"]] += 1
                s["rss"] = max(s["rss"], result["rss"])
                if result["seconds"] > s["slowest"][0]:
                    s["slowest"] = (result["seconds"], result["seed"])
                if result["data"] and len(s["kept"]) < KEEP_PER_FORMAT:
                    if result["outcome"] == "exception" and not reproduces(result["fmt"], result["data"]):
                        # the tree is shared with people editing it: a read that fails only once (a module
                        # caught mid-edit) is counted, and named in the report, but not kept
                        s["unreproduced"] += 1
                        s["exception"] -= 1
                        continue
                    s["kept"].append(keep(result["fmt"], result["data"], result["outcome"], result["detail"]))
    return stats


def reproduces(fmt: str, data: bytes) -> bool:
    """Does the input still make the reader raise, read afresh in a new process?"""
    path = WORK / f"verify{EXT[fmt]}"
    path.write_bytes(data)
    code = (
        "import sys\nfrom quantgate.formats import read_inventory\n"
        "try:\n    read_inventory(sys.argv[1], sys.argv[2])\nexcept Exception:\n    sys.exit(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path), fmt], capture_output=True, env=env,
                              timeout=4 * TIME_LIMIT_S)
    except subprocess.TimeoutExpired:
        return True
    finally:
        path.unlink(missing_ok=True)
    return proc.returncode == 3  # an import failing (a module mid-edit) is not the input's doing


def keep(fmt: str, data: bytes, outcome: str, detail: str) -> str:
    """Save a defect-triggering input under fixtures/fuzz-regressions/<format>/ (named by its hash)."""
    digest = hashlib.sha1(data).hexdigest()[:16]
    target = REGRESSIONS / fmt / f"{digest}{EXT[fmt]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
    return f"`{shown}`: {outcome} {detail}"


def markdown(stats: dict[str, dict], seconds: float, seed: int, heading: str = HEADING) -> str:
    lines = [
        heading,
        "",
        f"{seconds:g} s of mutation fuzzing (seed {seed}) through the real readers, each input bounded to "
        f"{TIME_LIMIT_S:g} s and {MEMORY_LIMIT >> 20} MiB of address space.",
        "",
        "| format | seed files | inputs tried | with findings | clean reads | exceptions | timeouts | memory | "
        "slowest input | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for fmt, s in sorted(stats.items()):
        lines.append(
            f"| {fmt} | {s['seeds']} | {s['tried']:,} | {s['findings']:,} | {s['ok']:,} | {s['exception']} | "
            f"{s['timeout']} | {s['memory']} | {s['slowest'][0] * 1000:.1f} ms ({s['slowest'][1]}) | "
            f"{s['rss'] / 2**20:.0f} MiB |"
        )
    kept = [k for s in stats.values() for k in s["kept"]]
    tried = sum(s["tried"] for s in stats.values())
    defects = {k: sum(s[k] for s in stats.values()) for k in ("exception", "timeout", "memory")}
    flaky = sum(s["unreproduced"] for s in stats.values())
    unrepro = (
        f"; besides, {flaky} read(s) raised once but not again in a fresh process (a module caught mid-edit in "
        "the shared working tree), not counted and not kept"
        if flaky
        else ""
    )
    earlier = sorted(p for p in REGRESSIONS.rglob("*") if p.is_file() and p.parent != REGRESSIONS)
    lines += [
        "",
        f"Total: {tried:,} inputs, {defects['exception']} exceptions, {defects['timeout']} timeouts, "
        f"{defects['memory']} memory blow-ups (each must be 0){unrepro}. Peak RSS is the worst single input's "
        "(the worker's VmHWM, reset before each input; the interpreter and the imported readers included). "
        "The slowest input is named by the valid file it was mutated from.",
        "",
        "Inputs kept as regression fixtures in this run: "
        + ("; ".join(kept) if kept else "none (no defect found)."),
        f"`fixtures/fuzz-regressions/` holds {len(earlier)} input(s) from every run so far, replayed by "
        "`tests/test_fuzz_regressions.py`.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--formats", help="fuzz only these formats (gguf,onnx,pte,safetensors): a separate section")
    parser.add_argument("--output", help="append the results section to this markdown file")
    args = parser.parse_args()
    formats = set(args.formats.split(",")) if args.formats else None
    stats = run(args.seconds, args.jobs, args.seed, formats)
    # a campaign on some formats only is its own section, beside the full campaign's
    heading = f"## Fuzz rerun: {', '.join(sorted(formats))}" if formats else HEADING
    text = markdown(stats, args.seconds, args.seed, heading)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    text = text.rstrip("\n") + f"\n\nRun on {time.strftime('%Y-%m-%d %H:%M')} UTC at commit " \
        f"{commit.stdout.strip() or 'unknown'}, with the readers as they were then.\n"
    print(text)
    if args.output:
        from results import order_sections, replace_section  # beside this script

        replace_section(Path(args.output), heading.split(" (")[0], text)
        order_sections(Path(args.output))
    defects = sum(s["exception"] + s["timeout"] + s["memory"] for s in stats.values())
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
