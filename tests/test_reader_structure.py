"""How the GGUF, ONNX and PTE readers are put together: imports go one way, no function past ~80 lines,
each layer owns its `detail`, and the ONNX layer ops come from one table."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantgate.formats.gguf import reader as gguf
from quantgate.formats.onnx import reader as onnx
from quantgate.formats.pte import reader as pte

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
FIXTURES = ROOT / "fixtures"
# the modules of the GGUF, ONNX and PTE readers (and what they share)
READER_MODULES = [
    "quantgate.core.inventory",
    "quantgate.formats.wire.binary",
    "quantgate.formats.wire.protobuf",
    "quantgate.formats.wire.flatbuffer",
    "quantgate.formats.gguf.reader",
    "quantgate.formats.gguf.types",
    "quantgate.formats.onnx.reader",
    "quantgate.formats.onnx.external",
    "quantgate.formats.onnx.proto",
    "quantgate.formats.onnx.shapes",
    "quantgate.formats.pte.reader",
    "quantgate.formats.pte.layers",
    "quantgate.formats.pte.model",
    "quantgate.formats.pte.schema",
    "quantgate.formats.pte.xnnpack",
    "quantgate.dequant.input_shapes",
    "quantgate.dequant.gguf",
    "quantgate.dequant.onnx",
    "quantgate.dequant.pte",
]
MAX_FUNCTION_LINES = 80


def _path(module: str) -> Path:
    return SRC / (module.replace(".", "/") + ".py")


def _imports(module: str) -> set[str]:
    """Every module `module` imports, at the top or inside a function (`from pkg import mod` counts
    as pkg.mod when that is a module)."""
    tree = ast.parse(_path(module).read_text(encoding="utf-8"))
    out: set[str] = set()
    package = module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if _path(f"{base}.{alias.name}").is_file())
    return out


def _cycles(modules: list[str]) -> list[list[str]]:
    """The import cycles among `modules` (each as a path a -> b -> ... -> a)."""
    graph = {m: sorted(_imports(m) & set(modules)) for m in modules}
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                found.append([*stack[stack.index(n):], m, n] if n in stack else [m, n])
            elif n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m, [])
    return found


def test_no_import_cycle_among_the_readers() -> None:
    assert _cycles([m for m in READER_MODULES if _path(m).is_file()]) == []
    # the reader drives the layer finder, never the other way (not even inside a function)
    assert "quantgate.formats.pte.layers" in _imports("quantgate.formats.pte.reader")
    assert "quantgate.formats.pte.reader" not in _imports("quantgate.formats.pte.layers")
    assert [m for m in READER_MODULES if not _path(m).is_file()] == []


@pytest.mark.parametrize("order", [("reader", "layers"), ("layers", "reader"), ("model", "layers")])
def test_pte_modules_import_in_either_order(order: tuple[str, str]) -> None:
    fixture = FIXTURES / "pte" / "more" / "two_methods.pte"
    code = (
        f"import quantgate.formats.pte.{order[0]}, quantgate.formats.pte.{order[1]}\n"
        "from quantgate.formats.pte import reader as pte\n"
        f"inv = pte.read({str(fixture)!r})\n"
        "print(len(inv.layers), [f.code for f in inv.structural_findings])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"{len(pte.read(str(fixture)).layers)} []"


def test_no_function_over_80_lines_in_the_readers() -> None:
    long = []
    for module in READER_MODULES:
        for node in ast.walk(ast.parse(_path(module).read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def _containers(obj: Any, out: list[Any]) -> list[Any]:
    if isinstance(obj, dict | list | set):
        out.append(obj)
        for value in obj.values() if isinstance(obj, dict) else obj:
            _containers(value, out)
    elif isinstance(obj, tuple):
        for value in obj:
            _containers(value, out)
    return out


@pytest.mark.parametrize(
    ("reader", "fixture"),
    [
        (gguf, "gguf/model_q4_0.gguf"),
        (onnx, "onnx/static_qop.onnx"),
        (pte, "pte/8da4w_emb4_xnnpack.pte"),
        (pte, "pte/more/two_methods.pte"),
        (pte, "pte/exports/mixer_int8_portable.pte"),
    ],
)
def test_each_layer_owns_its_detail(reader: Any, fixture: str) -> None:
    """A guard or renderer may add to one layer's detail: no other layer may see it change."""
    layers = reader.read(str(FIXTURES / fixture)).layers
    assert len(layers) >= 2
    owner: dict[int, str] = {}
    for layer in layers:
        for container in _containers(layer.detail, []):
            assert owner.setdefault(id(container), layer.name) == layer.name, (
                f"{layer.name} shares a {type(container).__name__} of its detail with {owner[id(container)]}"
            )
    before = [repr(layer.detail) for layer in layers[1:]]
    layers[0].detail["mutated"] = True
    for container in _containers(layers[0].detail, []):
        if isinstance(container, list):
            container.append("mutated")
    assert [repr(layer.detail) for layer in layers[1:]] == before


def test_layers_are_built_with_keywords() -> None:
    """`Layer(...)` has a dozen fields of similar types: a call names them (the safetensors readers
    are converted on their own branch)."""
    positional = []
    for path in sorted((SRC / "quantgate").rglob("*.py")):
        if path.name.startswith("safetensors"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(node, "func", None)
            if isinstance(node, ast.Call) and node.args and getattr(name, "id", getattr(name, "attr", None)) == "Layer":
                positional.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert positional == []


def test_layer_stays_slotted() -> None:
    """Tens of thousands per artifact: a Layer has no per-instance __dict__."""
    layer = gguf.read(str(FIXTURES / "gguf" / "model_q4_0.gguf")).layers[0]
    assert not hasattr(layer, "__dict__")


# -- the ONNX table: op -> (kind, weight input, representation) -------------------------------------

MS = "com.microsoft"
# (op, domain, inputs, initializers: name -> (shape, dtype), attributes, expected (name, kind,
# representation, quant_params, operand) of each layer)
_I8, _F32 = np.int8, np.float32
ONNX_OPS: list[tuple[str, str, list[str], dict[str, tuple[tuple[int, ...], Any]], dict[str, Any], list[tuple]]] = [
    ("MatMul", "", ["x", "w"], {"w": ((8, 4), _F32)}, {}, [("w", "linear", "float", None, None)]),
    ("MatMul", "", ["w", "x"], {"w": ((4, 2), _F32)}, {}, [("w", "linear", "float", None, None)]),
    ("Gemm", "", ["x", "w"], {"w": ((8, 4), _F32)}, {}, [("w", "linear", "float", None, None)]),
    ("Conv", "", ["x", "w"], {"w": ((4, 2, 1), _F32)}, {}, [("w", "conv", "float", None, None)]),
    ("ConvTranspose", "", ["x", "w"], {"w": ((2, 4, 1), _F32)}, {}, [("w", "conv", "float", None, None)]),
    ("Conv", "", ["x", "w"], {"w": ((4, 2), _F32)}, {}, []),  # a 2-D operand is not a conv filter
    ("FusedConv", MS, ["x", "w"], {"w": ((4, 2, 1), _F32)}, {}, [("w", "conv", "float", None, None)]),
    ("Gather", "", ["w", "x"], {"w": ((16, 4), _F32)}, {}, [("w", "embedding", "float", None, None)]),
    ("MatMulInteger", "", ["x", "w", "", "wz"], {"w": ((8, 4), _I8), "wz": ((), _I8)}, {},
     [("w", "linear", "integer", ["wz"], None)]),
    ("MatMulInteger", "", ["w", "x", "wz"], {"w": ((4, 2), _I8), "wz": ((), _I8)}, {},
     [("w", "linear", "integer", ["wz"], None)]),
    ("ConvInteger", "", ["x", "w", "", "wz"], {"w": ((4, 2, 1), _I8), "wz": ((), _I8)}, {},
     [("w", "conv", "integer", ["wz"], None)]),
    ("QLinearConv", "", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
     {"w": ((4, 2, 1), _I8), "ws": ((), _F32), "wz": ((), _I8)}, {}, [("w", "conv", "QOperator", ["ws", "wz"], None)]),
    ("QLinearMatMul", "", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
     {"w": ((8, 4), _I8), "ws": ((), _F32), "wz": ((), _I8)}, {}, [("w", "linear", "QOperator", ["ws", "wz"], None)]),
    ("QLinearMatMul", MS, ["w", "ws", "wz", "x", "xs", "xz", "ys", "yz"],
     {"w": ((4, 2), _I8), "ws": ((), _F32), "wz": ((), _I8)}, {}, [("w", "linear", "QOperator", ["ws", "wz"], None)]),
    ("FusedMatMul", MS, ["x", "w"], {"w": ((8, 4), _F32)}, {}, [("w", "linear", "float", None, None)]),
    ("QGemm", MS, ["x", "xs", "xz", "w", "ws", "wz"], {"w": ((8, 4), _I8), "ws": ((), _F32), "wz": ((), _I8)}, {},
     [("w", "linear", "QOperator", ["ws", "wz"], None)]),
    ("DynamicQuantizeMatMul", MS, ["x", "w", "ws", "wz"], {"w": ((8, 4), _I8), "ws": ((), _F32), "wz": ((), _I8)},
     {}, [("w", "linear", "contrib", ["ws", "wz"], None)]),
    ("MatMulIntegerToFloat", MS, ["x", "w", "xs", "ws", "xz", "wz"],
     {"w": ((8, 4), _I8), "ws": ((), _F32), "wz": ((), _I8)}, {}, [("w", "linear", "contrib", ["ws", "wz"], None)]),
    ("QAttention", MS, ["x", "w", "b", "xs", "ws", "m", "xz", "wz"],
     {"w": ((8, 24), _I8), "ws": ((), _F32), "wz": ((), _I8)}, {"num_heads": 2},
     [("w", "linear", "contrib", ["ws", "wz"], None)]),
    ("LSTM", "", ["x", "w", "r"], {"w": ((1, 16), _F32), "r": ((16, 4), _F32)}, {"hidden_size": 4},
     [("w", "linear", "float", None, "W"), ("r", "linear", "float", None, "R")]),
    ("GRU", "", ["x", "w", "r"], {"w": ((12, 8), _F32), "r": ((12, 4), _F32)}, {"hidden_size": 4},
     [("w", "linear", "float", None, "W"), ("r", "linear", "float", None, "R")]),
    ("RNN", "", ["x", "", "r"], {"r": ((4, 4), _F32)}, {"hidden_size": 4}, [("r", "linear", "float", None, "R")]),
    ("DynamicQuantizeLSTM", MS, ["x", "w", "r", "", "", "", "", "", "ws", "wz", "rs", "rz"],
     {"w": ((1, 8, 16), _I8), "r": ((1, 4, 16), _I8), "ws": ((1,), _F32), "wz": ((1,), _I8),
      "rs": ((1,), _F32), "rz": ((1,), _I8)}, {"hidden_size": 4},
     [("w", "linear", "contrib", ["ws", "wz"], "W"), ("r", "linear", "contrib", ["rs", "rz"], "R")]),
    # an op of the table in a domain it is not read in is no layer
    ("MatMul", MS, ["x", "w"], {"w": ((8, 4), _F32)}, {}, []),
    ("FusedMatMul", "", ["x", "w"], {"w": ((8, 4), _F32)}, {}, []),
]


@pytest.mark.parametrize("case", ONNX_OPS, ids=lambda c: f"{c[1] or 'onnx'}:{c[0]}:{'+'.join(c[2][:2])}")
def test_onnx_weight_ops(tmp_path: Path, case: tuple) -> None:
    helper = pytest.importorskip("onnx.helper")
    numpy_helper = pytest.importorskip("onnx.numpy_helper")
    from onnx import TensorProto

    op, domain, inputs, inits, attrs, expected = case
    node = helper.make_node(op, inputs, ["y"], domain=domain or None, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones(shape, dtype=dtype), name) for name, (shape, dtype) in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)])
    model.ir_version = 10
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    got = [(x.name, x.kind, x.detail["representation"], x.detail.get("quant_params"), x.detail.get("operand"))
           for x in onnx.read(str(path)).layers]
    assert got == expected


def test_onnx_table_is_every_op_the_reader_turns_into_a_layer() -> None:
    """The table is where an op is added: its entries are the ops tested above and the four with a
    reader of their own."""
    tested = {(op, domain) for op, domain, *_, expected in ONNX_OPS if expected}
    own = {(op, MS) for op in ("MatMulNBits", "MatMulBnb4", "GatherBlockQuantized")}
    table = {(op, domain if domain != "ai.onnx" else "") for op, domain in onnx._WEIGHT_OPS}
    assert table == tested | own
    assert all(isinstance(onnx._WEIGHT_OPS[key], str) for key in own)
