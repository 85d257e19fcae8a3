"""Benchmark: quantgate's GGUF reader vs gguf-py's GGUFReader on a Llama-3.2-1B-shaped GGUF.

    /work/venv/bin/python benchmarks/bench_gguf.py [--runs 3] [--keep]

The file is generated into benchmarks/.work/ (gitignored): the real Llama-3.2-1B layout (16 blocks,
hidden 2048, ffn 8192, 32 heads / 8 KV heads, vocab 128,256 with tokens, scores and token types, and
~280k merges), Q4_0 for every 2-D weight and F32 norms, written with gguf-py's own header writer.
The tensor data is a sparse hole (the file is extended with truncate), so the 0.7 GB file costs no
disk and both readers see the same bytes; neither reads tensor data.

Each reader runs in a fresh subprocess (time from inside the child, peak RSS from
getrusage(RUSAGE_CHILDREN) in the parent), median of --runs. Prints a markdown table with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from results import headline  # beside this script

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / ".work"
BIG = WORK / "llama-3.2-1b-shaped-q4_0.gguf"
# one UINT8 array of 5e7 elements in 128 bytes: gguf-py needs 41 s and 4.8 GB at 5e6 (not run here)
HOSTILE = ROOT / "fixtures" / "gguf" / "broken" / "huge_u8_array_128b.gguf"

VOCAB, HIDDEN, FFN, BLOCKS, HEADS, KV_HEADS, MERGES = 128_256, 2048, 8192, 16, 32, 8, 280_147
HEAD_DIM = HIDDEN // HEADS


def tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy-order shape) in llama.cpp's order; tied embeddings, so no output.weight."""
    out = [("token_embd.weight", (VOCAB, HIDDEN))]
    for b in range(BLOCKS):
        p = f"blk.{b}."
        out += [
            (p + "attn_norm.weight", (HIDDEN,)),
            (p + "attn_q.weight", (HIDDEN, HIDDEN)),
            (p + "attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (p + "attn_output.weight", (HIDDEN, HIDDEN)),
            (p + "ffn_norm.weight", (HIDDEN,)),
            (p + "ffn_gate.weight", (FFN, HIDDEN)),
            (p + "ffn_up.weight", (FFN, HIDDEN)),
            (p + "ffn_down.weight", (HIDDEN, FFN)),
        ]
    out.append(("output_norm.weight", (HIDDEN,)))
    return out


def generate() -> None:
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    WORK.mkdir(exist_ok=True)
    writer = gguf.GGUFWriter(str(BIG), "llama")
    writer.add_name("Llama-3.2-1B-shaped (quantgate benchmark)")
    writer.add_context_length(131_072)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(BLOCKS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    tokens = [f"tok{i}" for i in range(VOCAB)]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * VOCAB)
    writer.add_token_types([1] * VOCAB)
    writer.add_token_merges([f"t{i} m{i}" for i in range(MERGES)])
    writer.add_bos_token_id(128_000)
    writer.add_eos_token_id(128_001)
    total = 0
    for name, shape in tensor_shapes():
        if len(shape) == 1:
            dtype, raw_shape, nbytes = np.float32, shape, shape[0] * 4
            writer.add_tensor_info(name, raw_shape, np.dtype(dtype), nbytes)
        else:
            byte_shape = (shape[0], shape[1] // 32 * 18)
            nbytes = byte_shape[0] * byte_shape[1]
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=Q.Q4_0)
        total += nbytes + (-nbytes % 32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    with open(BIG, "r+b") as handle:
        handle.seek(0, os.SEEK_END)
        header = handle.tell()
        data_start = header + (-header % 32)
        handle.truncate(data_start + total)  # the data section is a sparse hole


CHILD = {
    "quantgate": """
import sys, time
sys.path.insert(0, {src!r})
t = time.perf_counter()
from quantgate.formats.gguf import reader as gguf
inv = gguf.read({path!r})
elapsed = time.perf_counter() - t
assert not inv.structural_findings, inv.structural_findings
print(elapsed, len(inv.layers), inv.params_stored)
""",
    "gguf-py": """
import time
t = time.perf_counter()
from gguf import GGUFReader
r = GGUFReader({path!r})
elapsed = time.perf_counter() - t
print(elapsed, sum(1 for x in r.tensors if len(x.shape) >= 2), sum(int(x.n_elements) for x in r.tensors))
""",
    "quantgate, 128-byte hostile file (read only, import excluded)": """
import sys, time
sys.path.insert(0, {src!r})
from quantgate.formats.gguf import reader as gguf
t = time.perf_counter()
inv = gguf.read({hostile!r})
elapsed = time.perf_counter() - t
assert [f.code for f in inv.structural_findings] == ["GGUF_LENGTH_PAST_EOF"]
print(elapsed, 0, 0)
""",
    "baseline (python only)": """
import time
t = time.perf_counter()
print(time.perf_counter() - t, 0, 0)
""",
}


def measure(kind: str) -> tuple[float, float, str]:
    """Run `kind` in a grandchild and read its peak RSS from a clean RUSAGE_CHILDREN."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        f"code = {CHILD[kind].format(src=str(ROOT / 'src'), path=str(BIG), hostile=str(HOSTILE))!r}\n"
        "p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'out': p.stdout.strip(), 'rss': rss}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    return float(result["out"].split()[0]), float(result["rss"]), result["out"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()
    if not BIG.exists():
        generate()
    size = BIG.stat().st_size
    rows = {}
    for kind in CHILD:
        samples = [measure(kind) for _ in range(args.runs)]
        rows[kind] = (
            statistics.median(s[0] for s in samples),
            statistics.median(s[1] for s in samples),
            samples[0][2],
        )
    q_time, q_rss, q_out = rows["quantgate"]
    g_time, g_rss, g_out = rows["gguf-py"]
    assert q_out.split()[1:] == g_out.split()[1:], (q_out, g_out)  # same weight tensors and params
    print(
        f"\nGGUF benchmark: {BIG.name}, {size:,} bytes (sparse), {len(tensor_shapes())} tensors, "
        f"vocab {VOCAB:,} + {MERGES:,} merges; median of {args.runs} runs, each in a fresh process\n"
    )
    print("| reader | import + open + parse (s) | peak RSS (MiB) |")
    print("|---|---|---|")
    for kind, (t, rss, _) in rows.items():
        print(f"| {kind} | {t:.4f} | {rss:.1f} |")
    base_rss = rows["baseline (python only)"][1]
    print(
        f"\nquantgate is {g_time / q_time:.0f}× faster than gguf-py's GGUFReader and uses "
        f"{g_rss / q_rss:.1f}× less peak memory ({q_rss - base_rss:.1f} MiB vs {g_rss - base_rss:.1f} MiB "
        "above a bare interpreter)."
    )
    print(headline("GGUF", f"Llama-3.2-1B shape, 128k vocab + 280k merges, {size / 1e9:.1f} GB", q_time, q_rss,
                   "gguf-py GGUFReader", g_time, g_rss, "time: import + open + parse, interpreter start excluded"))
    if not args.keep:
        BIG.unlink()


if __name__ == "__main__":
    main()
