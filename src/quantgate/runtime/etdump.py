"""A bounded, standard-library reader for the ExecuTorch ETDump file (profile events only).

The runtime writes the ETDump as a size-prefixed flatbuffer (u32 size, root offset, identifier
`ED00`; docs/runtime.md#etdump). Only the fields the runtime guard needs are read: each run's profile events
with their name, chain, instruction id, XNNPACK debug string and start/end times. Every read is
bounds-checked (`View`) and every visit is budgeted, so a damaged dump gives an `EtdumpError`,
never a crash or a hang.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantgate.formats.wire.binary import Budget, ReadError, View
from quantgate.formats.wire.flatbuffer import FlatBuffer

IDENTIFIER = b"ED00"


class EtdumpError(Exception):
    pass


@dataclass
class ProfileEvent:
    name: str
    chain_index: int
    instruction_id: int
    delegate_debug_id_int: int
    delegate_debug_id_str: str
    start_time: int
    end_time: int
    run: int

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_time - self.start_time)


def parse(data: bytes) -> list[ProfileEvent]:
    """Every profile event of every run in the dump, in file order."""
    view = View(data)
    try:
        # size-prefixed: the flatbuffer proper starts after the u32 size, so its window starts at 4
        t = FlatBuffer(view, Budget.for_size(len(data)), start=4)
        if t.identifier() != IDENTIFIER:
            raise EtdumpError(f"not an ETDump: identifier {t.identifier()!r}, expected {IDENTIFIER!r}")
        root = t.root()
        events: list[ProfileEvent] = []
        # ETDump {0 version, 1 run_data}; RunData {0 name, 1 bundled_input_index, 2 allocators, 3 events}
        for run_index, run in enumerate(t.tables(root, 1)):
            for event in t.tables(run, 3):
                # Event {0 profile_event, 1 allocation_event, 2 debug_event}
                profile = t.table(event, 0)
                if profile is None:
                    continue
                # ProfileEvent {0 name, 1 chain_index, 2 instruction_id, 3 delegate_debug_id_int,
                # 4 delegate_debug_id_str, 5 delegate_debug_metadata, 6 start_time, 7 end_time}
                events.append(
                    ProfileEvent(
                        name=t.string(profile, 0),
                        chain_index=int(t.scalar(profile, 1, "i32", 0)),
                        instruction_id=int(t.scalar(profile, 2, "i32", -1)),
                        delegate_debug_id_int=int(t.scalar(profile, 3, "i32", -1)),
                        delegate_debug_id_str=t.string(profile, 4),
                        start_time=int(t.scalar(profile, 6, "u64", 0)),
                        end_time=int(t.scalar(profile, 7, "u64", 0)),
                        run=run_index,
                    )
                )
        return events
    except ReadError as exc:
        raise EtdumpError(f"damaged ETDump: {exc.message}") from None
