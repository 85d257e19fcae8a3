"""NumPy .npy (a test plugin): one array per file."""


def sniff(head: bytes, size: int) -> str | None:
    return head[6:8].hex() if head[:6] == b"\x93NUMPY" else None
