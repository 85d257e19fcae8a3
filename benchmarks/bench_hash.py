"""Hashing at the speed of the hash: quantgate's streaming sha256 vs `sha256sum` and hashlib.file_digest.

A 1 GiB file of random-looking data (written once into benchmarks/.work), hashed warm, each tool in
its own process; reported as throughput and as a ratio to coreutils' sha256sum.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from results import headline  # beside this script

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
SRC = HERE.parent / "src"
SIZE = 1 << 30


def make_file() -> Path:
    path = WORK / "hash-1gib.bin"
    if not path.exists() or path.stat().st_size != SIZE:
        WORK.mkdir(parents=True, exist_ok=True)
        block = os.urandom(1 << 20)
        with open(path, "wb") as handle:
            for i in range(SIZE >> 20):
                handle.write(block[i % 7 :] + block[: i % 7])
    return path


def timed(cmd: list[str]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(SRC)})
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    path = make_file()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    rows = []
    tools = {
        "quantgate (hashing.sha256_file)": [
            sys.executable,
            "-c",
            f"from quantgate.core.hashing import sha256_file; sha256_file({str(path)!r})",
        ],
        "hashlib.file_digest": [
            sys.executable,
            "-c",
            f"import hashlib; hashlib.file_digest(open({str(path)!r}, 'rb'), 'sha256')",
        ],
    }
    if shutil.which("sha256sum"):
        tools["sha256sum (coreutils)"] = ["sha256sum", str(path)]
    times = {name: timed(cmd) for name, cmd in tools.items()}
    anchor = times.get("sha256sum (coreutils)", times["hashlib.file_digest"])
    for name, seconds in times.items():
        rows.append(f"| {name} | {seconds:.2f} s | {SIZE / seconds / 2**20:,.0f} MiB/s | {seconds / anchor:.2f}× |")
    print("## hash\n")
    print("sha256 of a 1 GiB file, warm page cache, whole process, best of 3.\n")
    print("| tool | time | throughput | time vs sha256sum |\n|---|---:|---:|---:|")
    print("\n".join(rows))
    if "sha256sum (coreutils)" in times:
        print(headline("hash", "sha256 of 1 GiB, warm cache", times["quantgate (hashing.sha256_file)"], None,
                       "sha256sum", times["sha256sum (coreutils)"], None, "at the speed of the hash"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
