"""GGUF: the bounded reader and the format's type tables.

`sniff` is this format's sniffing rule (formats.FORMATS); it imports nothing, so sniffing a file
never loads a reader.
"""


def sniff(head: bytes, size: int) -> str | None:
    """The magic `GGUF` at byte 0."""
    return "" if head[:4] == b"GGUF" else None
