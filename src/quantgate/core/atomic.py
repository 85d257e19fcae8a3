"""Reports are written atomically: a temporary file in the target's folder, renamed over the target.

The rename replaces whatever is at the path, a symlink included, and never follows it: a link planted
in a report folder (one a pull request controls) cannot redirect a report onto another file. A reader
sees the old file or the whole new one, never half of it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """`data` to `path` via a temporary file in the same folder and os.replace; raises OSError."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".quantgate-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
