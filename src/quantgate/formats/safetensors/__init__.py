"""safetensors: the header reader, the quantization layouts and their scales.

`sniff` is this format's sniffing rule (formats.FORMATS); it imports nothing.
"""


def sniff(head: bytes, size: int) -> str | None:
    """A u64 little-endian header length, then `{` (after the spaces the reference implementation
    accepts). A length past the end still sniffs as safetensors, so that the reader can say "header
    runs past the end" instead of "unknown format"."""
    if len(head) >= 9 and int.from_bytes(head[:8], "little") >= 2 and head[8:].lstrip(b" ")[:1] == b"{":
        return ""
    return None
