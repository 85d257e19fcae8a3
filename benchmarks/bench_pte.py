"""Benchmark: quantgate's static PTE reader (`pte-program`) vs executorch's `deserialize_pte_binary`.

    .venv/bin/python benchmarks/bench_pte.py [--blocks 32] [--dim 512] [--runs 3] [--curve 2x128,8x512]

The program is exported once (cached in benchmarks/.work/pte/) by executorch + torchao: a
transformer-shaped stack (embedding, BLOCKS x [RMSNorm, q/k/v/o projections, softmax attention over
16 tokens, RMSNorm, SwiGLU gate/up/down], final norm, LM head), every linear quantized 8da4w (torchao
`Int8DynamicActivationIntxWeightConfig`, int4 weights in groups of 32, dynamic int8 activations) and
lowered with the `XnnpackPartitioner`: 7 x BLOCKS + 1 delegated linears, the embedding left fp32.
With the defaults that is 225 linears in 130 delegate blobs, a 66 MB file; the export costs about
10 CPU-minutes (torch.export, torchao, partitioning, one flatc run per blob), so it is done once.

Measured, each in a fresh process (wall time of the whole process as a CI step pays it, and peak RSS
from getrusage(RUSAGE_CHILDREN) of a wrapper), best of --runs:

1. `quantgate guard pte-program FILE` (needs no torch) vs a script that imports executorch and calls
   `deserialize_pte_binary` on the file's bytes (the anchor: what executorch's own tools use);
2. the read alone, in-process, imports excluded: `quantgate.formats.pte.reader.read(path)` vs
   `deserialize_pte_binary(open(path).read())`;
3. a bare interpreter, for scale;
4. the cost curve: the same on the smaller programs of --curve (exported once too), so that time and
   memory can be read against the number of delegates and the file size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from results import WRAPPER, headline  # beside this script

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "pte"
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore")
TOKENS, HEADS, VOCAB = 16, 8, 4096

EXPORT = r"""
import sys, time, torch
from torch import nn
import torch.nn.functional as F
blocks, dim, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
TOKENS, HEADS, VOCAB = 16, 8, 4096
ffn = dim * 8 // 3 // 64 * 64
torch.manual_seed(0)

class RMSNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
    def forward(self, x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * self.weight

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(), RMSNorm()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(dim, ffn, bias=False), nn.Linear(dim, ffn, bias=False)
        self.down = nn.Linear(ffn, dim, bias=False)
    def forward(self, x):
        h = self.attn_norm(x)
        d = dim // HEADS
        q, k, v = (p(h).view(TOKENS, HEADS, d).transpose(0, 1) for p in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5, dim=-1) @ v
        x = x + self.o(att.transpose(0, 1).reshape(TOKENS, dim))
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList(Block() for _ in range(blocks))
        self.norm = RMSNorm()
        self.head = nn.Linear(dim, VOCAB, bias=False)
    def forward(self, tokens):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))

from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
from torchao.quantization.granularity import PerGroup
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower
t0 = time.time()
model = LM().eval()
quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)),
          filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
with torch.no_grad():
    ep = torch.export.export(model, (torch.arange(TOKENS),))
lowered = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
buffer = lowered.to_executorch().buffer
open(out, "wb").write(buffer)
print(f"exported {out}: {len(buffer):,} bytes in {time.time() - t0:.0f} s", file=sys.stderr)
"""

# whole process: the guard's own entry point is run directly (python -m quantgate guard pte-program FILE)
ANCHOR_PROCESS = r"""
import json, sys
from executorch.exir._serialize._program import deserialize_pte_binary
pte = deserialize_pte_binary(open(sys.argv[1], "rb").read())
plans = pte.program.execution_plan
print(json.dumps({"delegates": sum(len(p.delegates) for p in plans),
                  "instructions": sum(len(c.instructions) for p in plans for c in p.chains)}))
"""

READ_QUANTGATE = r"""
import json, sys, time
from quantgate.formats.pte import reader as pte
t = time.perf_counter()
inv = pte.read(sys.argv[1])
elapsed = time.perf_counter() - t
print(json.dumps({"call_s": elapsed, "layers": len(inv.layers),
                  "errors": [f.code for f in inv.structural_findings if f.severity == "error"]}))
"""

READ_ANCHOR = r"""
import json, sys, time
from executorch.exir._serialize._program import deserialize_pte_binary
t = time.perf_counter()
pte = deserialize_pte_binary(open(sys.argv[1], "rb").read())
elapsed = time.perf_counter() - t
print(json.dumps({"call_s": elapsed, "delegates": sum(len(p.delegates) for p in pte.program.execution_plan)}))
"""

BASELINE = "print('{}')"


def measured(cmd: list[str]) -> dict:
    out = subprocess.run([PY, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=ENV, check=True)
    result = json.loads(out.stdout)
    if result["rc"] not in (0, 1):  # a guard FAIL (exit 1) is still a measurement
        raise SystemExit(f"{cmd} failed ({result['rc']}):\n{result['stderr']}")
    return result


def best(cmd: list[str], runs: int) -> tuple[dict, dict]:
    """Fastest of `runs` (wall), with the JSON object the command printed."""
    run = min((measured(cmd) for _ in range(runs)), key=lambda r: r["wall_s"])
    return run, json.loads(run["stdout"])


def export(blocks: int, dim: int) -> Path:
    path = WORK / f"lm_{blocks}x{dim}_8da4w_xnnpack.pte"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        print(f"exporting {path.name} (once; cached) ...", file=sys.stderr, flush=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # a concurrent `make bench` exports its own copy
        subprocess.run([PY, "-c", EXPORT, str(blocks), str(dim), str(tmp)], env=ENV, check=True)
        tmp.replace(path)  # atomic: a reader never sees a half-written program
    return path


def measure(path: Path, runs: int) -> dict[str, tuple[dict, dict]]:
    return {
        "anchor process": best([PY, "-c", ANCHOR_PROCESS, str(path)], runs),
        "anchor read": best([PY, "-c", READ_ANCHOR, str(path)], runs),
        "guard process": best([PY, "-m", "quantgate", "guard", "pte-program", str(path)], runs),
        "quantgate read": best([PY, "-c", READ_QUANTGATE, str(path)], runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--curve", default="2x128,8x512", help="smaller programs, BLOCKSxDIM,... ('' for none)")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in item.split("x")) for item in args.curve.split(",") if item]
    shapes = [s for s in shapes if s != (args.blocks, args.dim)] + [(args.blocks, args.dim)]
    baseline, _ = best([PY, "-c", BASELINE], args.runs)
    results = [(blocks, dim, export(blocks, dim)) for blocks, dim in shapes]
    measured_rows = [(blocks, dim, path, measure(path, args.runs)) for blocks, dim, path in results]

    blocks, dim, path, rows = measured_rows[-1]
    size, linears = path.stat().st_size, 7 * blocks + 1
    delegates = rows["anchor process"][1]["delegates"]
    print(f"## pte\n\n`{path.name}`: {size:,} bytes, a {blocks}-block transformer-shaped LM (dim {dim}, "
          f"{TOKENS} tokens, vocab {VOCAB}) with {linears} linears quantized 8da4w by torchao and lowered to "
          f"XNNPACK in {delegates} delegate blobs, exported by executorch. Best of {args.runs} runs, each in a "
          "fresh process.\n")
    print("| what | quantgate | deserialize_pte_binary | ratio |")
    print("|---|---|---|---|")
    base_rss = baseline["peak_rss_mb"]
    anchor_run, _ = rows["anchor process"]
    guard_run, guard = rows["guard process"]
    q_read, a_read = rows["quantgate read"][1], rows["anchor read"][1]
    print(f"| whole process (import + read), s | {guard_run['wall_s']:.3f} | {anchor_run['wall_s']:.3f} | "
          f"{anchor_run['wall_s'] / guard_run['wall_s']:.1f}× faster |")
    print(f"| peak RSS, MiB | {guard_run['peak_rss_mb']:.1f} | {anchor_run['peak_rss_mb']:.1f} | "
          f"{anchor_run['peak_rss_mb'] / guard_run['peak_rss_mb']:.1f}× less |")
    print(f"| peak RSS above a bare interpreter ({base_rss:.1f} MiB), MiB | "
          f"{guard_run['peak_rss_mb'] - base_rss:.1f} | {anchor_run['peak_rss_mb'] - base_rss:.1f} | |")
    print(f"| the read alone (in-process, imports excluded), s | {q_read['call_s']:.4f} | "
          f"{a_read['call_s']:.4f} | {a_read['call_s'] / q_read['call_s']:.1f}× faster |")
    m = guard.get("metrics", {})
    print(f"\nThe guard: {guard.get('status')}, weight_ops {m.get('weight_ops')} (the {linears} linears + the "
          f"embedding), quantized {m.get('quantized_ops')}, int8_coverage {m.get('int8_coverage')}, "
          f"coverage.ops.int4 {m.get('coverage', {}).get('ops', {}).get('int4')}; structural errors in the "
          f"read: {q_read['errors'] or 'none'}. The anchor decodes the whole object tree (and imports torch); "
          "quantgate walks the tables it needs over mmap and never imports torch.")
    if len(measured_rows) > 1:
        print("\nCost curve (same model family; whole process / read alone):\n")
        print("| program | bytes | delegates | linears | quantgate s | quantgate MiB | quantgate read s "
              "| anchor s | anchor MiB | anchor read s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for b, d, pth, r in measured_rows:
            g, a = r["guard process"][0], r["anchor process"][0]
            print(f"| {b} blocks × {d} | {pth.stat().st_size:,} | {r['anchor process'][1]['delegates']} | {7 * b + 1} "
                  f"| {g['wall_s']:.3f} | {g['peak_rss_mb']:.1f} | {r['quantgate read'][1]['call_s']:.4f} "
                  f"| {a['wall_s']:.3f} | {a['peak_rss_mb']:.1f} | {r['anchor read'][1]['call_s']:.4f} |")
    print(headline("PTE", f"{blocks}-block 8da4w LM, {linears} XNNPACK linears, {size / 1e6:.0f} MB",
                   guard_run["wall_s"], guard_run["peak_rss_mb"], "deserialize_pte_binary",
                   anchor_run["wall_s"], anchor_run["peak_rss_mb"], "whole process"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
