"""Child process of the `fidelity` guard for `.pte` pairs: run the reference and the artifact on the
same seeded inputs with the ExecuTorch runtime and compare their outputs.

    python -m quantgate.runtime.pte_outputs [--method NAME] [--samples N] [--seed S] [--int-high H] REF ART

Like `pte_runner` (whose loading helpers it reuses), it runs outside quantgate's own process because
the runtime's loader can crash on a malformed program, started and bounded by `quantgate.runtime.child`
like every runtime child. stdout carries one JSON document:
`{"outputs": {...metrics...}}` or `{"finding": [CODE, message]}`; runtime log lines go to stderr.
Inputs come from the reference method's metadata: floats standard normal, integers uniform in
[0, int_high), booleans false, from a torch generator seeded with `--seed`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

_FLOATS = {5: "float16", 6: "float32", 7: "float64", 15: "bfloat16"}
_INTS = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64"}


def _load(pl: Any, path: str, method: str | None, side: str) -> tuple[Any, Any]:
    from quantgate.runtime import pte_runner as runner

    notes: list[str] = []
    runner.import_kernels(runner.flatbuffer_bytes(path), notes)
    log: list[str] = []
    try:
        with runner.captured_stderr(log):
            program = pl._load_program(path, enable_etdump=False, debug_buffer_size=0,
                                       program_verification=pl.Verification.InternalConsistency)
            names = [program.get_method_name(i) for i in range(program.num_methods())]
            name = method or ("forward" if "forward" in names or not names else names[0])
            loaded = program.load_method(name)
    except Exception as exc:
        raise RuntimeError(f"the ExecuTorch runtime cannot load the {side}: {exc}") from None
    return program, loaded


def _inputs(torch: Any, meta: Any, gen: Any, int_high: int) -> list[Any]:
    out = []
    for i in range(meta.num_inputs()):
        info = meta.input_tensor_meta(i)
        dtype, sizes = int(info.dtype()), [int(s) for s in info.sizes()]
        if dtype in _FLOATS:
            out.append(torch.randn(sizes, generator=gen).to(getattr(torch, _FLOATS[dtype])))
        elif dtype in _INTS:
            out.append(torch.randint(0, max(1, int_high), sizes, generator=gen).to(getattr(torch, _INTS[dtype])))
        elif dtype == 11:
            out.append(torch.zeros(sizes, dtype=torch.bool))
        else:
            raise ValueError(f"input {i} has ScalarType {dtype}, which the input builder does not make")
    return out


def _signature(meta: Any) -> list[tuple[int, list[int]]]:
    return [(int(meta.input_tensor_meta(i).dtype()), [int(s) for s in meta.input_tensor_meta(i).sizes()])
            for i in range(meta.num_inputs())]


def compare(ref: str, art: str, *, samples: int, seed: int, int_high: int, method: str | None) -> dict[str, Any]:
    import numpy as np
    import torch
    from executorch.extension.pybindings import portable_lib as pl

    from quantgate.dequant.outputs import OutputsError, compare_outputs

    try:
        _, ref_method = _load(pl, ref, method, "reference")
        _, art_method = _load(pl, art, method, "artifact")
    except RuntimeError as exc:
        return {"finding": ["FIDELITY_RUNTIME_FAILED", str(exc)]}
    ref_meta, art_meta = ref_method.method_meta(), art_method.method_meta()
    if _signature(ref_meta) != _signature(art_meta):
        return {"finding": ["FIDELITY_OUTPUT_MISMATCH", f"the programs take different inputs: artifact "
                            f"{_signature(art_meta)}, reference {_signature(ref_meta)}"]}
    gen = torch.Generator().manual_seed(seed)
    ref_runs, art_runs = [], []
    for _ in range(samples):
        try:
            inputs = _inputs(torch, ref_meta, gen, int_high)
        except ValueError as exc:
            return {"finding": ["FIDELITY_OUTPUTS_UNAVAILABLE", str(exc)]}
        for side, loaded, runs in (("reference", ref_method, ref_runs), ("artifact", art_method, art_runs)):
            try:
                outs = loaded.call([t.clone() for t in inputs])
            except Exception as exc:
                return {"finding": ["FIDELITY_RUNTIME_FAILED", f"the ExecuTorch runtime failed to run the {side}: "
                                    f"{exc}"]}
            runs.append([np.asarray(o.float().numpy() if hasattr(o, "numpy") else o) for o in outs])
    if len(ref_runs[0]) != len(art_runs[0]):
        return {"finding": ["FIDELITY_OUTPUT_MISMATCH", f"the artifact has {len(art_runs[0])} outputs, the "
                            f"reference {len(ref_runs[0])}"]}
    try:
        result = compare_outputs(ref_runs, art_runs, [f"output{i}" for i in range(len(ref_runs[0]))])
    except OutputsError as exc:
        return {"finding": [exc.code, exc.message]}
    from importlib.metadata import version

    result.update(samples=samples, seed=seed, int_high=int_high, runtime=f"executorch {version('executorch')}")
    # a program's input sizes are fixed by its method metadata (the upper bounds of dynamic ones)
    result["inputs"] = {f"input{i}": sizes for i, (_, sizes) in enumerate(_signature(ref_meta))}
    return {"outputs": result}


def document_of(argv: list[str]) -> dict[str, Any]:
    """The one JSON document for the command line `argv` (without --serve)."""
    parser = argparse.ArgumentParser(prog="python -m quantgate.runtime.pte_outputs")
    parser.add_argument("reference")
    parser.add_argument("artifact")
    parser.add_argument("--method")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--int-high", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        return compare(args.reference, args.artifact, samples=max(1, args.samples), seed=args.seed,
                       int_high=args.int_high, method=args.method)
    except Exception as exc:
        return {"finding": ["FIDELITY_RUNTIME_FAILED", f"{type(exc).__name__}: {exc}"]}


def main(argv: list[str] | None = None) -> int:
    from quantgate.runtime.child import main_json

    # `--serve`: long-lived, one request per line (quantgate.runtime.child.serve)
    return main_json(document_of, sys.argv[1:] if argv is None else argv,
                     ("numpy", "torch", "executorch.extension.pybindings.portable_lib"))


# --- the parent side ------------------------------------------------------------------------------


def run_outputs(ref: str, art: str, *, samples: int, seed: int, int_high: int, timeout_s: float,
                method: str | None = None, max_rss_mb: int = 4096) -> dict[str, Any]:
    """Run the child; {"outputs": ...} or {"finding": (code, message)}; never raises."""
    import importlib.util

    if importlib.util.find_spec("executorch") is None or importlib.util.find_spec("torch") is None:
        return {"finding": ("FIDELITY_OUTPUTS_UNAVAILABLE", "the ExecuTorch runtime is not installed: "
                            "pip install 'quantgate[executorch]' to compare .pte outputs")}
    args = ["--samples", str(samples), "--seed", str(seed), "--int-high", str(int_high)]
    if method:
        args += ["--method", method]
    args += ["--", ref, art]
    from quantgate.runtime.child import serve_json_child

    # the long-lived child: torch and executorch imported once per run (per --jobs worker)
    return serve_json_child("quantgate.runtime.pte_outputs", args, "the ExecuTorch runtime", timeout_s, max_rss_mb)


if __name__ == "__main__":
    sys.exit(main())
