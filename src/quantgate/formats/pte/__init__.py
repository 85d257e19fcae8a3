"""ExecuTorch .pte: the flatbuffer program, its layers and the XNNPACK delegate.

`sniff` and `sniff_ptd` are this format's sniffing rules (formats.FORMATS); they import nothing.
"""


def sniff(head: bytes, size: int) -> str | None:
    """An ExecuTorch program: the flatbuffer identifier at bytes 4-8. Any `ETnn` is a program, so that
    `integrity` can say the identifier is wrong rather than "unknown format"."""
    if len(head) >= 8 and head[4:6] == b"ET" and head[6:8].isdigit():
        return head[4:8].decode("ascii")
    return None


def sniff_ptd(head: bytes, size: int) -> str | None:
    """An ExecuTorch named-data file (`.ptd`, a program's weights beside it): `FTnn` at bytes 4-8."""
    if len(head) >= 8 and head[4:6] == b"FT" and head[6:8].isdigit():
        return head[4:8].decode("ascii")
    return None
