"""The parsed ExecuTorch program (`formats.pte.reader` fills it, `formats.pte.layers` reads it): plans, values,
instructions, delegates and segments, with the structural findings met while reading.

Apart from the reader so that the layer finder can use these types without importing the reader
(the reader imports the layer finder: imports go one way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantgate.core import findings as F
from quantgate.core.findings import Finding
from quantgate.formats.pte import schema as S

FINDINGS_PER_CODE = F.FINDINGS_PER_CODE
MAX_DIMS = 16


def is_constant(allocated: bool, data_buffer_idx: int, external: bool) -> bool:
    """A tensor whose bytes the program carries or names, not one the runtime computes: its data sits
    outside the file (a `.ptd`), or it is not memory-planned and points at a constant buffer (index 0
    is the schema's reserved empty buffer). `Tensor.constant` and the runtime's program table both ask this."""
    return external or (not allocated and data_buffer_idx > 0)


@dataclass
class Tensor:
    scalar_type: int
    sizes: tuple[int, ...]
    data_buffer_idx: int
    allocated: bool
    dynamism: int
    fqn: str | None
    external: bool
    # (memory_id, offset) of a memory-planned tensor: a static view shares its base's memory and has
    # no instruction of its own (the emitter elides it), so this is how a view is traced to its base
    mem: tuple[int, int] | None = None

    @property
    def constant(self) -> bool:
        return is_constant(self.allocated, self.data_buffer_idx, self.external)

    @property
    def numel(self) -> int:
        if len(self.sizes) > MAX_DIMS:  # a damaged shape (PTE_BAD_SHAPE): no product of a million dims
            return 0
        n = 1
        for d in self.sizes:
            n *= max(d, 0)
        return n

    @property
    def dtype(self) -> str:
        return S.scalar_name(self.scalar_type)

    @property
    def nbytes(self) -> int:
        return self.numel * S.STORAGE_BYTES.get(self.scalar_type, 1)


@dataclass
class Value:
    kind: int  # KernelTypes tag
    tensor: Tensor | None = None
    items: list[int] | None = None  # IntList values, TensorList value indices
    number: int | float | None = None  # Int / Double


@dataclass
class Instruction:
    index: int  # position among all of the plan's instructions (chains in order): a layer's `position`
    chain: int
    kind: int  # InstructionArguments tag
    target: int = -1  # op_index / delegate_index
    args: list[int] = field(default_factory=list)
    in_chain: int = 0  # position within its chain (what ETDump's instruction_id counts)


@dataclass
class Delegate:
    index: int
    backend: str
    location: int
    data_index: int
    span: tuple[int, int] | None = None  # (absolute offset, length) of the payload in the file


@dataclass
class Plan:
    name: str
    values: list[Value] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)
    instructions: list[Instruction] = field(default_factory=list)
    delegates: list[Delegate] = field(default_factory=list)
    chains: int = 0
    inputs: list[int] = field(default_factory=list)
    non_const_buffer_sizes: list[int] = field(default_factory=list)  # memory-planned arenas, bytes


@dataclass
class Segment:
    index: int
    start: int  # absolute file offset
    size: int


@dataclass
class Program:
    path: str
    size: int
    has_header: bool = False
    program_size: int = 0
    segment_base: int = 0
    segment_data_size: int = 0
    segments: list[Segment] = field(default_factory=list)
    constant_segment: int | None = None
    constant_offsets: list[int] = field(default_factory=list)
    legacy_constant_buffers: int = 0
    legacy_constant_bytes: int = 0
    named_data: list[tuple[str, int]] = field(default_factory=list)
    inline_data: list[tuple[int, int]] = field(default_factory=list)
    mutable_segment: int | None = None  # Program.mutable_data_segments[0]: initial state of mutable buffers
    mutable_offsets: list[int] = field(default_factory=list)
    mutable_segments: int = 0  # how many the program lists (the runtime reads only the first)
    plans: list[Plan] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    complete: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    capped: F.CappedFindings = field(init=False)  # the shared per-code cap; `read` closes it

    def __post_init__(self) -> None:
        self.capped = F.CappedFindings(self.findings)

    def add(self, finding: Finding) -> None:
        self.capped.add(finding)

    def segment_bytes(self, index: int) -> tuple[int, int] | None:
        if 0 <= index < len(self.segments):
            seg = self.segments[index]
            return seg.start, seg.size
        return None
