"""Child process of the `pte-inspector` guard: run ExecuTorch programs once with ETDump enabled.

    python -m quantgate.runtime.pte_runner [--method NAME] [--data FILE.ptd] [--workdir DIR] PTE ...

The ExecuTorch loader can crash (SIGSEGV/SIGABRT) on malformed programs (docs/runtime.md), so this
never runs inside quantgate's own process: the guard starts it, bounds its time, and treats a
death by signal as an ERROR. stdout carries exactly one JSON document (the C++ runtime's log lines
and Python warnings are sent to stderr), one entry per program:

    {"runner": {...versions, import time...},
     "results": [{"path", "status": ok|load_failed|method_load_failed|execute_failed|input_unsupported|error,
                  "stage", "error_code", "error_name", "message", "log", "method", "inputs",
                  "instructions": [...] | null, "values": [...] | null, "delegates": {...} | null,
                  "program_error",
                  "events": [...] | null, "timing_s": {...}}]}

The events are parsed here with quantgate's own ETDump reader; the instruction table (chain 0 of
the method: op name and args per instruction, which ones are DelegateCalls) and a compact value
table (tensor dtype, sizes, constant or not) come from quantgate's own bounded program-table
reader, run only after the runtime itself has accepted the program. Classification happens in the parent
(`quantgate.guards.pte_inspector`), which needs neither torch nor executorch.

`--serve` makes it a long-lived runner (`quantgate.runtime.child.serve`): it imports torch and
executorch once, then answers each request line `{"path", "method", "data"}` with one entry as above;
`restart` is asked for when the program failed inside the runtime (the runtime's state after that is
not trusted, so the parent starts a fresh runner for the next program).

`--fault segv|abort|hang|nojson|garbage|memory|grandchild|orphan` is for tests only: it makes the child
fail in that way before the heavy imports (`quantgate.runtime.child.fault`), so the guard's crash,
timeout, no-JSON, memory-limit and process-group paths can be tested cheaply.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# runtime/core/error.h (executorch 1.5.1)
ERROR_NAMES = {
    0x00: "Ok",
    0x01: "Internal",
    0x02: "InvalidState",
    0x03: "EndOfMethod",
    0x10: "NotSupported",
    0x11: "NotImplemented",
    0x12: "InvalidArgument",
    0x13: "InvalidType",
    0x14: "OperatorMissing",
    0x15: "RegistrationExceedingMaxKernels",
    0x16: "RegistrationAlreadyRegistered",
    0x20: "NotFound",
    0x21: "MemoryAllocationFailed",
    0x22: "AccessFailed",
    0x23: "InvalidProgram",
    0x24: "InvalidExternalData",
    0x25: "OutOfResources",
    0x30: "DelegateInvalidCompatibility",
    0x31: "DelegateMemoryAllocationFailed",
    0x32: "DelegateInvalidHandle",
}
# the pybindings spell the code "error 0x23", "error: 0x14" or "error: 0x:23"
_CODE = re.compile(r"0x:?([0-9a-fA-F]+)")

# ScalarType ids (scalar_type.fbs) for building inputs
_INT_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64"}
_FLOAT_TYPES = {5: "float16", 6: "float32", 7: "float64", 15: "bfloat16"}
_BOOL = 11

_LOG_LINES = 40  # runtime log lines kept per program (the first ones name the cause)


def error_code(message: str) -> int | None:
    match = _CODE.search(message)
    return int(match.group(1), 16) if match else None


@contextlib.contextmanager
def captured_stderr(sink: list[str]) -> Iterator[None]:
    """Collect what the C++ runtime writes to fd 2 (its log lines) and echo it to the real stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            os.write(2, data)
            lines = data.decode("utf-8", errors="replace").splitlines()
            # cpuinfo probing lines appear on every first load and say nothing about the program
            kept = [line for line in lines if line.strip() and "cpuinfo" not in line]
            sink.extend(kept[:_LOG_LINES])


def flatbuffer_bytes(path: str) -> bytes:
    """The program's flatbuffer part (operator names live there), never the weight segments."""
    with open(path, "rb") as handle:
        head = handle.read(32)
        size = os.fstat(handle.fileno()).st_size
        if len(head) >= 24 and head[8:12] == b"eh00":
            size = min(size, int.from_bytes(head[16:24], "little"))
        handle.seek(0)
        return handle.read(min(size, 256 << 20))


def import_kernels(data: bytes, notes: list[str]) -> None:
    """Register the kernel libraries the program names (the portable_lib has neither by default)."""
    wanted = [
        (b"quantized_decomposed::", "executorch.kernels.quantized"),
        (b"llama::", "executorch.extension.llm.custom_ops.custom_ops"),
    ]
    for marker, module in wanted:
        if marker in data:
            try:
                importlib.import_module(module)
            except Exception as exc:  # reported; the load then fails with OperatorMissing
                notes.append(f"could not import {module}: {exc}")


def _make_input(torch: Any, dtype_id: int, sizes: list[int]) -> Any:
    """Deterministic inputs: integers (token ids, indices) are zeros, always in range; floats vary."""
    if dtype_id in _INT_TYPES:
        return torch.zeros(sizes, dtype=getattr(torch, _INT_TYPES[dtype_id]))
    if dtype_id == _BOOL:
        return torch.zeros(sizes, dtype=torch.bool)
    if dtype_id in _FLOAT_TYPES:
        numel = 1
        for s in sizes:
            numel *= s
        values = (torch.arange(numel, dtype=torch.float32) % 17) / 17.0 - 0.5
        return values.reshape(sizes).to(getattr(torch, _FLOAT_TYPES[dtype_id]))
    raise ValueError(f"input dtype {dtype_id} is not supported")


def _read_program(path: str, method: str) -> tuple[list[dict[str, Any]] | None, list[Any] | None, str | None]:
    """The method's chain-0 instruction and value tables (read only once the runtime accepted the file)."""
    from quantgate.runtime import program_table

    try:
        instructions, values = program_table.read(path, method)
        return instructions, values, None
    except Exception as exc:  # the parent falls back to event names and says so
        return None, None, f"{type(exc).__name__}: {exc}"


def _read_delegates(path: str, method: str) -> dict[str, Any] | None:
    """The XNNPACK delegates' weight nodes, to give executed delegate ops their shapes (None if unread)."""
    from quantgate.runtime import program_table

    try:
        return program_table.xnnpack_nodes(path, method)
    except Exception:  # the parent then reports delegated ops by descriptor only, as before
        return None


def _fail(entry: dict[str, Any], status: str, stage: str, exc: BaseException) -> dict[str, Any]:
    message = str(exc)
    code = error_code(message)
    entry.update(
        status=status,
        stage=stage,
        message=message,
        error_code=code,
        error_name=ERROR_NAMES.get(code, "unknown") if code is not None else None,
    )
    return entry


class _StepFailed(Exception):
    def __init__(self, status: str, stage: str, cause: BaseException) -> None:
        super().__init__(stage)
        self.status, self.stage, self.cause = status, stage, cause


@contextlib.contextmanager
def _step(status: str, stage: str, entry: dict[str, Any] | None = None, timing: str | None = None) -> Iterator[None]:
    """One step of a program's run: a failure becomes `status` at `stage`; `timing` names its time."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        raise _StepFailed(status, stage, exc) from exc
    if entry is not None and timing is not None:
        entry["timing_s"][timing] = time.perf_counter() - started


def _load_program(pl: Any, path: str, data_path: str | None, entry: dict[str, Any]) -> Any:
    with _step("load_failed", "load_program", entry, "load_program"), captured_stderr(entry["log"]):
        program = pl._load_program(
            path,
            enable_etdump=True,
            debug_buffer_size=0,
            program_verification=pl.Verification.InternalConsistency,
            data_path=data_path,
        )
    return program


def _choose_method(program: Any, method: str | None, entry: dict[str, Any]) -> str:
    with _step("load_failed", "method_names"):
        names = [program.get_method_name(i) for i in range(program.num_methods())]
    entry["methods"] = names
    if method is None:
        method = "forward" if "forward" in names or not names else names[0]
    entry["method"] = method
    return method


def _load_method(program: Any, method: str, entry: dict[str, Any]) -> tuple[Any, Any]:
    with _step("method_load_failed", "load_method", entry, "load_method"), captured_stderr(entry["log"]):
        loaded = program.load_method(method)
        meta = loaded.method_meta()
    return loaded, meta


def _build_inputs(torch: Any, meta: Any, entry: dict[str, Any]) -> list[Any]:
    inputs: list[Any] = []
    entry["inputs"] = described = []
    with _step("input_unsupported", "inputs"):
        for i in range(meta.num_inputs()):
            info = meta.input_tensor_meta(i)
            dtype_id, sizes = int(info.dtype()), [int(s) for s in info.sizes()]
            described.append({"dtype": dtype_id, "sizes": sizes})
            inputs.append(_make_input(torch, dtype_id, sizes))
    return inputs


def _execute(loaded: Any, inputs: list[Any], entry: dict[str, Any]) -> None:
    with _step("execute_failed", "execute", entry, "execute"), captured_stderr(entry["log"]):
        loaded.call(inputs)


def _collect_events(program: Any, workdir: str, entry: dict[str, Any]) -> None:
    """The run's ETDump, written to the workdir and read with quantgate's own reader."""
    from quantgate.runtime import etdump

    dump = os.path.join(workdir, f"{len(os.listdir(workdir))}.etdp")
    with _step("error", "etdump"):
        program.write_etdump_result_to_file(dump)
        entry["etdump"] = dump
        with open(dump, "rb") as handle:
            events = etdump.parse(handle.read())
    entry["events"] = [
        {
            "name": e.name,
            "chain": e.chain_index,
            "instruction": e.instruction_id,
            "delegate_name": e.delegate_debug_id_str,
            "delegate_id": e.delegate_debug_id_int,
            "start_ns": e.start_time,
            "duration_ns": e.duration_ns,
            "run": e.run,
        }
        for e in events
    ]


def _read_tables(path: str, method: str, entry: dict[str, Any]) -> None:
    """The instruction, value and delegate tables, read once the runtime has run the program."""
    started = time.perf_counter()
    instructions, values, problem = _read_program(path, method)
    delegates = _read_delegates(path, method) if instructions is not None else None
    entry["timing_s"]["read_program"] = time.perf_counter() - started
    entry.update(instructions=instructions, values=values, delegates=delegates, program_error=problem,
                 status="ok", stage="done")


def run_one(torch: Any, pl: Any, path: str, method: str | None, data_path: str | None,
            workdir: str) -> dict[str, Any]:
    """One program loaded, run once with ETDump and described: the entry of the module docstring."""
    entry: dict[str, Any] = {"path": path, "status": "error", "log": [], "method": method, "timing_s": {}}
    notes: list[str] = []
    import_kernels(flatbuffer_bytes(path), notes)
    entry["notes"] = notes
    try:
        program = _load_program(pl, path, data_path, entry)
        method = _choose_method(program, method, entry)
        loaded, meta = _load_method(program, method, entry)
        inputs = _build_inputs(torch, meta, entry)
        _execute(loaded, inputs, entry)
        _collect_events(program, workdir, entry)
    except _StepFailed as failed:
        return _fail(entry, failed.status, failed.stage, failed.cause)
    _read_tables(path, method, entry)
    return entry


_PRELOAD = ("torch", "executorch.extension.pybindings.portable_lib")


def _versions() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"torch": torch.__version__}
    try:
        from importlib.metadata import version

        out["executorch"] = version("executorch")
    except Exception:
        out["executorch"] = None
    return out


def _answer(base: str, keep: bool) -> Callable[[Any], tuple[dict[str, Any], bool]]:
    """The served runner's answer to `{"path", "method", "data"}`: the program's entry; a fresh runner
    is asked for after any program that did not run cleanly."""

    def answer(request: Any) -> tuple[dict[str, Any], bool]:
        import torch
        from executorch.extension.pybindings import portable_lib as pl

        try:
            path = str(Path(str(request["path"])))
        except (KeyError, TypeError) as exc:
            return {"status": "error", "stage": "request", "message": str(exc)}, True
        # each program gets its own folder for its ETDump, emptied after it (unless --workdir keeps them)
        scratch = tempfile.mkdtemp(dir=base)
        try:
            entry = run_one(torch, pl, path, request.get("method"), request.get("data"), scratch)
        except Exception as exc:  # reported for this program; the runner's state is then not trusted
            entry = {"path": path, "status": "error", "stage": "runner", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            if not keep:
                import shutil

                shutil.rmtree(scratch, ignore_errors=True)
        return entry, entry.get("status") != "ok"

    return answer


def _run_all(paths: list[str], method: str | None, data: str | None, workdir: str | None) -> dict[str, Any]:
    """The one-shot form: every program in turn, one document."""
    started = time.perf_counter()
    runner: dict[str, Any] = {"python": sys.version.split()[0]}
    try:
        import torch
        from executorch.extension.pybindings import portable_lib as pl

        runner["imports_s"] = round(time.perf_counter() - started, 3)
        runner.update(_versions())
        results = []
        # with --workdir the ETDump files are kept there (tests fuzz them); otherwise they are temporary
        with contextlib.ExitStack() as stack:
            folder = workdir or stack.enter_context(tempfile.TemporaryDirectory())
            for path in paths:
                try:
                    results.append(run_one(torch, pl, str(Path(path)), method, data, folder))
                except Exception as exc:  # one program's surprise must not lose the others' results
                    results.append({"path": path, "status": "error", "stage": "runner",
                                    "message": f"{type(exc).__name__}: {exc}"})
        return {"runner": runner, "results": results}
    except Exception as exc:
        return {"runner": runner, "error": f"{type(exc).__name__}: {exc}", "results": []}


def main(argv: list[str] | None = None) -> int:
    from quantgate.runtime import child

    parser = argparse.ArgumentParser(prog="python -m quantgate.runtime.pte_runner")
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--method")
    parser.add_argument("--data", help="the .ptd file holding external weights")
    parser.add_argument("--workdir")
    parser.add_argument("--fault", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help="serve requests from stdin (one JSON per line)")
    args = parser.parse_args(argv)
    if args.serve:
        with contextlib.ExitStack() as stack:
            base = args.workdir or stack.enter_context(tempfile.TemporaryDirectory())
            return child.serve(_answer(base, keep=bool(args.workdir)), _PRELOAD, _versions, args.workdir)
    if args.fault:
        child.fault(args.fault, args.workdir)
    with child.json_stdout() as out:
        out.write(json.dumps(_run_all(args.paths, args.method, args.data, args.workdir)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
