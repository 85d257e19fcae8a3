"""Benchmark: the pte-inspector guard against the ExecuTorch devtools flow a user would otherwise run.

    /work/venv/bin/python benchmarks/bench_pte_inspector.py [--layers 64] [--repeat 1]

On the fly (into benchmarks/.work/) it exports a deep MLP (LAYERS x Linear(256,256) + ReLU) twice:
PT2E int8 without a delegate (portable kernels: ~5 instructions per layer, 2 events each) and PT2E
int8 lowered to XNNPACK. It runs each program once with ETDump to get a dump, then measures, every
measurement in its own fresh process (peak RSS from getrusage(RUSAGE_CHILDREN) of a wrapper):

1. reading the ETDump: quantgate's stdlib reader (no torch) vs `executorch.devtools.Inspector`
   (what the ExecuTorch docs point to); time of the call itself and the process's peak RSS;
2. the whole measurement: `quantgate guard pte-inspector FILE` (its own process plus the child
   that runs the program) vs a script that loads the program with the pybindings, runs it once,
   writes the ETDump and opens it with the Inspector.

Ratios are quantgate / reference (below 1 means quantgate is cheaper).
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
WORK = ROOT / "benchmarks" / ".work" / "pte_inspector"
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONWARNINGS="ignore")

EXPORT = r"""
import sys, torch
from torch import nn
layers, out = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(256, 256) for _ in range(layers))
    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x
import executorch.kernels.quantized
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer, get_symmetric_quantization_config)
from executorch.exir import to_edge, to_edge_transform_and_lower
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
args = (torch.randn(8, 256),)
def quantized():
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(Deep().eval(), args).module(), q)
    prepared(*args)
    return convert_pt2e(prepared)
ep = torch.export.export(quantized(), args)
open(out + "/deep_int8_portable.pte", "wb").write(to_edge(ep).to_executorch().buffer)
ep = torch.export.export(quantized(), args)
lowered = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
open(out + "/deep_int8_xnnpack.pte", "wb").write(lowered.to_executorch().buffer)
"""

# the reference user flow: pybindings + devtools Inspector
REFERENCE_RUN = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
import executorch.kernels.quantized
from executorch.extension.pybindings.portable_lib import _load_for_executorch
from executorch.devtools import Inspector
m = _load_for_executorch(sys.argv[1], enable_etdump=True, debug_buffer_size=0)
m.forward([torch.zeros(8, 256)])
m.write_etdump_result_to_file(sys.argv[2])
inspector = Inspector(etdump_path=sys.argv[2])
events = sum(len(block.events) for block in inspector.event_blocks)
print(json.dumps({"events": events, "wall_s": time.perf_counter() - t0}))
"""

PARSE_QUANTGATE = r"""
import json, sys, time
t0 = time.perf_counter()
from quantgate.runtime import etdump
data = open(sys.argv[1], "rb").read()
t1 = time.perf_counter()
events = etdump.parse(data)
t2 = time.perf_counter()
print(json.dumps({"events": len(events), "call_s": t2 - t1, "wall_s": t2 - t0}))
"""

PARSE_INSPECTOR = r"""
import json, sys, time
t0 = time.perf_counter()
from executorch.devtools import Inspector
t1 = time.perf_counter()
inspector = Inspector(etdump_path=sys.argv[1])
events = sum(len(block.events) for block in inspector.event_blocks)
t2 = time.perf_counter()
print(json.dumps({"events": events, "call_s": t2 - t1, "wall_s": t2 - t0}))
"""


def measured(cmd: list[str]) -> dict:
    out = subprocess.run([PY, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=ENV, check=True)
    result = json.loads(out.stdout)
    if result["rc"] not in (0, 1):
        raise SystemExit(f"{cmd} failed ({result['rc']}):\n{result['stderr']}")
    return result


def best(cmd: list[str], repeat: int) -> tuple[dict, dict | None]:
    """Fastest of `repeat` runs (wall), with the JSON the command printed."""
    runs = [measured(cmd) for _ in range(repeat)]
    run = min(runs, key=lambda r: r["wall_s"])
    text = run["stdout"].strip()
    try:
        printed = json.loads(text)  # `quantgate guard` prints one indented object
    except json.JSONDecodeError:
        try:
            printed = json.loads(text.splitlines()[-1]) if text else None
        except json.JSONDecodeError:
            printed = None
    return run, printed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    names = ["deep_int8_portable", "deep_int8_xnnpack"]
    if not all((WORK / f"{n}.pte").exists() for n in names):
        print(f"exporting {args.layers}-layer models into {WORK} ...", file=sys.stderr)
        subprocess.run([PY, "-c", EXPORT, str(args.layers), str(WORK)], env=ENV, check=True,
                       stderr=subprocess.DEVNULL)
    rows = []
    for name in names:
        pte = WORK / f"{name}.pte"
        dump = WORK / f"{name}.etdp"
        ref_run, _ = best([PY, "-c", REFERENCE_RUN, str(pte), str(dump)], args.repeat)
        qg_run, qg_printed = best([PY, "-m", "quantgate", "guard", "pte-inspector", str(pte)], args.repeat)
        qp_run, qp = best([PY, "-c", PARSE_QUANTGATE, str(dump)], args.repeat)
        ip_run, ip = best([PY, "-c", PARSE_INSPECTOR, str(dump)], args.repeat)
        metrics = (qg_printed or {}).get("metrics", {})
        rows.append({
            "file": pte.name,
            "size_bytes": pte.stat().st_size,
            "etdump_bytes": dump.stat().st_size,
            "events": qp["events"],
            "guard_status": (qg_printed or {}).get("status"),
            "weight_ops": metrics.get("weight_ops"),
            "int8_coverage": metrics.get("int8_coverage"),
            "parse": {
                "quantgate_s": qp["call_s"], "inspector_s": ip["call_s"],
                "time_ratio": qp["call_s"] / ip["call_s"],
                "quantgate_process_s": qp_run["wall_s"], "inspector_process_s": ip_run["wall_s"],
                "quantgate_rss_mb": qp_run["peak_rss_mb"], "inspector_rss_mb": ip_run["peak_rss_mb"],
                "rss_ratio": qp_run["peak_rss_mb"] / ip_run["peak_rss_mb"],
            },
            "whole": {
                "quantgate_s": qg_run["wall_s"], "reference_s": ref_run["wall_s"],
                "time_ratio": qg_run["wall_s"] / ref_run["wall_s"],
                "quantgate_rss_mb": qg_run["peak_rss_mb"], "reference_rss_mb": ref_run["peak_rss_mb"],
                "rss_ratio": qg_run["peak_rss_mb"] / ref_run["peak_rss_mb"],
            },
        })
    for row in rows:
        p, w = row["parse"], row["whole"]
        print(f"{row['file']}: {row['size_bytes']:,} B, ETDump {row['etdump_bytes']:,} B, "
              f"{row['events']} events; guard {row['guard_status']} weight_ops={row['weight_ops']} "
              f"int8={row['int8_coverage']}")
        print(f"  ETDump read : quantgate {p['quantgate_s'] * 1e3:8.2f} ms {p['quantgate_rss_mb']:7.1f} MB | "
              f"Inspector {p['inspector_s'] * 1e3:8.2f} ms {p['inspector_rss_mb']:7.1f} MB | "
              f"ratio time {p['time_ratio']:.3f} rss {p['rss_ratio']:.3f} "
              f"(processes {p['quantgate_process_s']:.2f} s vs {p['inspector_process_s']:.2f} s)")
        print(f"  whole run   : quantgate {w['quantgate_s']:8.2f} s  {w['quantgate_rss_mb']:7.1f} MB | "
              f"reference {w['reference_s']:8.2f} s  {w['reference_rss_mb']:7.1f} MB | "
              f"ratio time {w['time_ratio']:.3f} rss {w['rss_ratio']:.3f}")
    (WORK / "results.json").write_text(json.dumps(rows, indent=2))
    for row in rows[-1:]:  # the XNNPACK program
        p, w = row["parse"], row["whole"]
        print(headline("ETDump", f"{row['file']}: {row['events']} events, read, whole process",
                       p["quantgate_process_s"], p["quantgate_rss_mb"], "executorch Inspector",
                       p["inspector_process_s"], p["inspector_rss_mb"], f"the call alone: {1 / p['time_ratio']:.1f}×"))
        print(headline("PTE run", f"{row['file']}: run once + ETDump + read, whole process", w["quantgate_s"],
                       w["quantgate_rss_mb"], "pybindings + Inspector script", w["reference_s"],
                       w["reference_rss_mb"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
