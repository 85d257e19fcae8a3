"""sha256 in one streaming pass with large reads, only when a waiver or manifest needs it."""

from __future__ import annotations

import hashlib
import os

from quantgate.core import remote
from quantgate.core.progress import Progress

CHUNK = 8 << 20  # large reads keep the hash, not the syscalls, the bottleneck


def sha256_file(path: str | os.PathLike[str], label: str | None = None) -> str:
    if remote.is_url(path):
        from quantgate.core.remote import RemoteError, display_url, sha256_url

        try:
            return sha256_url(path, label or display_url(path))
        except RemoteError as exc:
            raise OSError(str(exc)) from None  # the gate logs it and goes on without a digest
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    progress = Progress(f"sha256 {label or os.fspath(path)}", size, "B") if size > 256 << 20 else None
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            if progress:
                progress.update(n)
    if progress:
        progress.close()
    return digest.hexdigest()
