"""Benchmark: `quantgate guard fidelity` vs a gguf-py + numpy script doing the same comparison.

    .venv/bin/python benchmarks/bench_fidelity.py [--runs 3] [--keep]

A llama-shaped pair is generated into benchmarks/.work/ (gitignored): vocab 32,000, hidden 512, 12
blocks, 8 heads / 2 KV heads, ffn 1,536, untied output: 69.2M parameters with real N(0, 0.02) weights,
written once as F16 (the reference) and once as Q8_0 (`gguf.quants.quantize`), 1-D norms F32.

Contenders, each a whole process (python start-up and imports included, as a CI step pays them),
peak RSS from getrusage(RUSAGE_CHILDREN) of a wrapper, median of --runs:

* quantgate, whole: `quantgate guard fidelity Q8 --param reference=F16 --param max_elements=1e9
  --param outputs=false` (every value of every layer compared);
* quantgate, default: the same with the default per-layer cap (4,194,304 values: the two 16.4M-value
  embedding/output tables are compared on evenly spaced rows);
* gguf-py + numpy: `GGUFReader` on both files, `gguf.quants.dequantize` per tensor, cosine and SQNR in
  float64 per layer — the script a user would write.

The whole-layer numbers of quantgate and the script are checked to agree (worst cosine and SQNR).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from results import headline  # beside this script

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / ".work"
REF = WORK / "fidelity-llama-69m-f16.gguf"
ART = WORK / "fidelity-llama-69m-q8_0.gguf"
VOCAB, HIDDEN, BLOCKS, HEADS, KV_HEADS, FFN = 32_000, 512, 12, 8, 2, 1536
HEAD_DIM = HIDDEN // HEADS


def weights(rng):  # -> list[(name, float32 array)]
    import numpy as np

    def w(rows: int, cols: int):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)

    def norm():
        return np.ones(HIDDEN, np.float32)

    yield "token_embd.weight", w(VOCAB, HIDDEN)
    for b in range(BLOCKS):
        p = f"blk.{b}."
        yield p + "attn_norm.weight", norm()
        yield p + "attn_q.weight", w(HIDDEN, HIDDEN)
        yield p + "attn_k.weight", w(KV_HEADS * HEAD_DIM, HIDDEN)
        yield p + "attn_v.weight", w(KV_HEADS * HEAD_DIM, HIDDEN)
        yield p + "attn_output.weight", w(HIDDEN, HIDDEN)
        yield p + "ffn_norm.weight", norm()
        yield p + "ffn_gate.weight", w(FFN, HIDDEN)
        yield p + "ffn_up.weight", w(FFN, HIDDEN)
        yield p + "ffn_down.weight", w(HIDDEN, FFN)
    yield "output_norm.weight", norm()
    yield "output.weight", w(VOCAB, HIDDEN)


def generate() -> int:
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    WORK.mkdir(parents=True, exist_ok=True)
    params = 0
    writers = {}
    for path, ftype in ((REF, gguf.LlamaFileType.MOSTLY_F16), (ART, gguf.LlamaFileType.MOSTLY_Q8_0)):
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name("fidelity-bench")
        writer.add_block_count(BLOCKS)
        writer.add_embedding_length(HIDDEN)
        writer.add_feed_forward_length(FFN)
        writer.add_head_count(HEADS)
        writer.add_head_count_kv(KV_HEADS)
        writer.add_file_type(ftype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writers[path] = writer
    for name, data in weights(np.random.default_rng(0)):
        params += data.size
        if data.ndim == 1:
            writers[REF].add_tensor(name, data)
            writers[ART].add_tensor(name, data)
        else:
            writers[REF].add_tensor(name, data.astype(np.float16))
            writers[ART].add_tensor(name, quantize(data, Q.Q8_0), raw_dtype=Q.Q8_0)
    for writer in writers.values():
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return params


SCRIPT = r"""
import json, math, sys, time
t0 = time.perf_counter()
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
ref = {t.name: t for t in GGUFReader(sys.argv[1]).tensors}
rows = []
for t in GGUFReader(sys.argv[2]).tensors:
    if len(t.shape) < 2:
        continue
    a = dequantize(ref[t.name].data, ref[t.name].tensor_type).astype(np.float64).ravel()
    b = dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
    err = float(np.dot(a - b, a - b))
    rows.append((float(np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b))),
                 10 * math.log10(float(np.dot(a, a)) / err)))
print(json.dumps({"s": time.perf_counter() - t0, "cosine_min": min(r[0] for r in rows),
                  "sqnr_min": min(r[1] for r in rows), "layers": len(rows)}))
"""


def command(kind: str) -> list[str]:
    if kind == "gguf-py + numpy":
        return [sys.executable, "-c", SCRIPT, str(REF), str(ART)]
    cmd = [sys.executable, "-m", "quantgate", "guard", "fidelity", str(ART), "--param", f"reference={REF}",
           "--param", "outputs=false"]
    if kind == "quantgate (whole layers)":
        cmd += ["--param", "max_elements=1000000000"]
    return cmd


def measure(kind: str) -> tuple[float, float, dict]:
    """Whole-process wall time and peak RSS of one run, from a wrapper's RUSAGE_CHILDREN."""
    wrapper = (
        "import json, os, resource, subprocess, sys, time\n"
        f"cmd = {command(kind)!r}\n"
        "t0 = time.perf_counter()\n"
        f"env = {{**os.environ, 'PYTHONPATH': {str(ROOT / 'src')!r}}}\n"
        "p = subprocess.run(cmd, capture_output=True, text=True, env=env)\n"
        "wall = time.perf_counter() - t0\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'wall': wall, 'rss': rss, 'out': p.stdout, 'rc': p.returncode, 'err': p.stderr[-800:]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    if result["rc"] not in (0,):
        raise SystemExit(f"{kind} failed ({result['rc']}): {result['err']}")
    return result["wall"], result["rss"], json.loads(result["out"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated pair")
    args = parser.parse_args()
    if not (REF.exists() and ART.exists()):
        generate()
    kinds = ["quantgate (whole layers)", "quantgate (default, sampled above 4M values)", "gguf-py + numpy"]
    rows = {}
    for kind in kinds:
        samples = [measure(kind) for _ in range(args.runs)]
        rows[kind] = (statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples),
                      samples[0][2])
    whole = rows[kinds[0]][2]["metrics"]["weights"]
    script = rows[kinds[2]][2]
    assert whole["layers"] == script["layers"]
    assert abs(whole["cosine"]["min"] - script["cosine_min"]) < 1e-6, (whole["cosine"], script)
    assert abs(whole["sqnr_db"]["min"] - script["sqnr_min"]) < 1e-3, (whole["sqnr_db"], script)
    sampled = rows[kinds[1]][2]["metrics"]["weights"]
    print("## fidelity\n")
    print(f"Weight fidelity of a 69.2M-parameter llama-shaped Q8_0 GGUF ({ART.stat().st_size / 1e6:.0f} MB) "
          f"against its F16 parent ({REF.stat().st_size / 1e6:.0f} MB), {whole['layers']} weight tensors; "
          f"whole-process wall time and peak RSS, median of {args.runs} runs, each a fresh process.\n")
    print("| contender | wall (s) | peak RSS (MiB) | cosine min | SQNR min (dB) |")
    print("|---|---|---|---|---|")
    print(f"| quantgate, every value | {rows[kinds[0]][0]:.2f} | {rows[kinds[0]][1]:.0f} | "
          f"{whole['cosine']['min']:.6f} | {whole['sqnr_db']['min']:.3f} |")
    print(f"| quantgate, default ({sampled['sampled_layers']} layers sampled) | {rows[kinds[1]][0]:.2f} | "
          f"{rows[kinds[1]][1]:.0f} | {sampled['cosine']['min']:.6f} | {sampled['sqnr_db']['min']:.3f} |")
    print(f"| gguf-py + numpy script | {rows[kinds[2]][0]:.2f} | {rows[kinds[2]][1]:.0f} | "
          f"{script['cosine_min']:.6f} | {script['sqnr_min']:.3f} |")
    q_t, q_m = rows[kinds[0]][0], rows[kinds[0]][1]
    g_t, g_m = rows[kinds[2]][0], rows[kinds[2]][1]
    print(f"\nComparing every value, quantgate takes {q_t / g_t:.2f}× the script's time and {q_m / g_m:.2f}× its "
          "peak memory (it decodes each layer in row chunks of about a million values instead of whole "
          "tensors), and its numbers agree with the script's to 1e-6.")
    print(headline("fidelity", f"69M-param llama Q8_0 vs F16 GGUF, {whole['layers']} layers", q_t, q_m,
                   "gguf-py + numpy script", g_t, g_m))
    if not args.keep:
        REF.unlink()
        ART.unlink()


if __name__ == "__main__":
    main()
