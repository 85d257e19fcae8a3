"""quantgate's safetensors reader vs `safetensors.safe_open` on Llama-2-7B-shaped checkpoints.

    .venv/bin/python benchmarks/bench_safetensors.py [--repeat 20] [--runs 7]

The files have the real Llama-2-7B tensor names and shapes (291 tensors, F16, 13.5 GB; then the same
model in the 4-bit GPTQ layout, 963 tensors) but their data is a sparse hole (`truncate`), so they cost
no disk: both readers only touch the header (quantgate also derives the layers and layouts). Each reader runs
in its own subprocess; "read" is the best of `--repeat` reads after the imports, "process" the least CPU
time of `--runs` fresh processes (interpreter, imports, one read; the readers' runs taken in turn), and
the peak RSS is the child's maximum resident set (imports included): what a CI step pays.
safe_open is native Rust, so parity is the goal here, not a win.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from results import headline, least_cost_interleaved  # beside this script

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / ".work"


def llama_entries(layers: int, hidden: int, inter: int, vocab: int) -> list[tuple[str, list[int]]]:
    """A Llama-shaped checkpoint: embeddings, 9 tensors per layer, final norm and lm_head."""
    out = [("model.embed_tokens.weight", [vocab, hidden])]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [(f"{p}.self_attn.{n}_proj.weight", [hidden, hidden]) for n in "qkvo"]
        out += [(f"{p}.mlp.gate_proj.weight", [inter, hidden]), (f"{p}.mlp.up_proj.weight", [inter, hidden]),
                (f"{p}.mlp.down_proj.weight", [hidden, inter])]
        out += [(f"{p}.input_layernorm.weight", [hidden]), (f"{p}.post_attention_layernorm.weight", [hidden])]
    out += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
    return out


def llama2_7b_entries() -> list[tuple[str, list[int]]]:
    return llama_entries(layers=32, hidden=4096, inter=11008, vocab=32000)


def gptq_entries() -> list[tuple[str, str, list[int]]]:
    """The same model as a 4-bit g128 GPTQ checkpoint: each Linear but lm_head becomes qweight,
    qzeros, scales and g_idx (as TheBloke-style Llama-2-7B-GPTQ files store it)."""
    out: list[tuple[str, str, list[int]]] = []
    for name, shape in llama2_7b_entries():
        if len(shape) == 2 and "layers." in name:
            module, (o, i) = name[: -len(".weight")], shape
            out += [(f"{module}.qweight", "I32", [i // 8, o]),
                    (f"{module}.qzeros", "I32", [i // 128, o // 8]),
                    (f"{module}.scales", "F16", [i // 128, o]),
                    (f"{module}.g_idx", "I32", [i])]
        else:
            out.append((name, "F16", shape))
    return out


def make_file(path: Path, gptq: bool = False, entries: list[tuple[str, str, list[int]]] | None = None) -> int:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    if entries is None:
        entries = gptq_entries() if gptq else [(n, "F16", s) for n, s in llama2_7b_entries()]
        assert len(entries) == (291 + 224 * 3 if gptq else 291)
    for name, dtype, shape in entries:
        n = 4 if dtype in ("I32", "F32") else 2
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)  # a sparse hole: no data blocks written
    return offset


CHILD = {
    "quantgate": """
        from quantgate.formats.safetensors.reader import read
        def run():
            inv = read(PATH)
            assert inv.structurally_sound and len(inv.layers) == 226, inv.structural_findings
            assert not inv.semantic_findings or inv.semantic_findings[0].code == "ST_NO_QUANT_CONFIG"
            return len(inv.layers)
    """,
    "safe_open(numpy)": """
        from safetensors import safe_open
        def run():
            with safe_open(PATH, framework="numpy") as f:
                meta = f.metadata()
                n = 0
                for k in f.keys():
                    s = f.get_slice(k)
                    s.get_dtype(); s.get_shape()
                    n += 1
            return n
    """,
    "safe_open(pt)": """
        from safetensors import safe_open
        import torch  # what a PyTorch user's script has loaded anyway
        def run():
            with safe_open(PATH, framework="pt") as f:
                meta = f.metadata()
                n = 0
                for k in f.keys():
                    s = f.get_slice(k)
                    s.get_dtype(); s.get_shape()
                    n += 1
            return n
    """,
    "python (baseline)": """
        def run():
            return 0
    """,
}

TIMER = """
import time, resource, json, sys
PATH = sys.argv[1]
{body}
best = float("inf")
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); run(); best = min(best, time.perf_counter() - t)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the parent
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"best_s": best, "maxrss_kb": hwm}}))
"""


def measure_all(path: Path, repeat: int, runs: int) -> dict[str, dict[str, float]]:
    """Per reader: the best of `repeat` reads in one process and its peak RSS, and `process_s`, the least
    CPU time of `runs` fresh processes (interpreter, imports and one read), the readers' runs in turn."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    codes = {label: TIMER.format(body=textwrap.dedent(body)) for label, body in CHILD.items()}
    fresh = {label: [sys.executable, "-c", code, str(path), "1"] for label, code in codes.items()}
    cold = least_cost_interleaved(fresh, runs, env=env)
    results = {}
    for label, code in codes.items():
        proc = subprocess.run([sys.executable, "-c", code, str(path), str(repeat)], capture_output=True,
                              text=True, env=env, check=True)
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1]) | {"process_s": cold[label]["s"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="reads in one process (best kept)")
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per reader, in turn (least CPU kept)")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    for gptq in (False, True):
        path = WORK / f"llama2-7b-shaped{'-gptq' if gptq else ''}.safetensors"
        data = make_file(path, gptq)
        bench(path, data, args.repeat, args.runs,
              "4-bit GPTQ g128 layout, 963 tensors" if gptq else "F16, 291 tensors")
        path.unlink()
    fast_path(args.runs)


# the reader's one fast path: orjson parses the header, and a header it proves sound is done; any other
# is read by the plain path, json's parse with a hook recording repeated keys (formats/safetensors/header.py)
FAST_PATH = "from quantgate.cli.main import run; run()"
PLAIN_PATH = "import quantgate.core.fastjson as f; f.orjson = None; from quantgate.cli.main import run; run()"


def _passed(run: dict) -> None:
    if run["rc"] != 0 or not re.search(r'"status":\s*"PASS"', run["stdout"][:3000]):
        raise SystemExit(f"quantgate guard did not pass: exit {run['rc']}\n{run['stdout'][:2000]}")


def fast_path(runs: int) -> None:
    """The fast path against the plain path on a large header (the curve benchmark's 49,998 tensors), in
    fresh `quantgate guard` processes, their runs in turn: kept while it saves more than 10%."""
    path = WORK / "llama-5555-layers.safetensors"
    entries = [(n, "F16", s) for n, s in llama_entries(layers=5555, hidden=2048, inter=8192, vocab=32000)]
    make_file(path, entries=entries)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    guard = ["-q", "guard", "safetensors-dtypes", str(path)]
    cmds = {"orjson, then json if not sound (the fast path)": [sys.executable, "-c", FAST_PATH, *guard],
            "json alone (the plain path)": [sys.executable, "-c", PLAIN_PATH, *guard]}
    best = least_cost_interleaved(cmds, runs, env=env, checks={label: _passed for label in cmds})
    path.unlink()
    fast = best[next(iter(cmds))]
    print(f"\n**The fast path**: `quantgate guard safetensors-dtypes` on a {len(entries):,}-tensor header "
          f"(Llama-shaped, F16), whole process, least CPU time of {runs} runs in turn\n")
    print("| header parse | process (CPU) | peak RSS | fast path's saving |")
    print("|---|---:|---:|---:|")
    for label, r in best.items():
        saving = "" if r is fast else (f"{1 - fast['s'] / r['s']:.0%} of the time, "
                                       f"{1 - fast['mib'] / r['mib']:.0%} of the RSS")
        print(f"| {label} | {r['s'] * 1e3:.0f} ms | {r['mib']:.1f} MiB | {saving} |")


def bench(path: Path, data: int, repeat: int, runs: int, what: str) -> None:
    with open(path, "rb") as handle:
        header_len = struct.unpack("<Q", handle.read(8))[0]
    print(f"\n**{path.name}**, {path.stat().st_size / 1e9:.2f} GB ({data / 1e9:.2f} GB of data as a "
          f"sparse hole), header {header_len:,} bytes, {what}\n")
    results = measure_all(path, repeat, runs)
    q = results["quantgate"]
    print("| reader | best read | process | peak RSS | quantgate / reader: read, process, RSS |")
    print("|---|---:|---:|---:|---|")
    for label, r in results.items():
        ratio = "" if label in ("quantgate", "python (baseline)") else (
            f"{q['best_s'] / r['best_s']:.2f}x, {q['process_s'] / r['process_s']:.2f}x, "
            f"{q['maxrss_kb'] / r['maxrss_kb']:.2f}x")
        print(f"| {label} | {r['best_s'] * 1e3:.3f} ms | {r['process_s'] * 1e3:.0f} ms | "
              f"{r['maxrss_kb'] / 1024:.1f} MB | {ratio} |")
    a = results["safe_open(numpy)"]
    print(headline("safetensors", f"Llama-2-7B shape, {what}", q["process_s"], q["maxrss_kb"] / 1024,
                   "safetensors.safe_open (numpy)", a["process_s"], a["maxrss_kb"] / 1024,
                   "native Rust: parity is the goal"))


if __name__ == "__main__":
    main()
