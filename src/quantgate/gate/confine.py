"""One confinement rule for every file read beside an artifact, and for the files discovery follows.

A sibling (config.json, a sharded index, a manifest beside the artifact, a manifest's reference) is
read only when, checked with `lstat`/`realpath` before any open:
  - its name is a plain relative path: not absolute, no NUL, no `..` component;
  - its real path lies inside the artifact's real folder (the rule ONNX external data follows), or,
    for a Hugging Face cache snapshot, inside that cache repo's `blobs/` (the layout links every
    file of `models--org--name/snapshots/<rev>/` to `../../blobs/<sha>` by design);
  - it is a regular file once links are followed (a FIFO, socket or device is never opened).
ONNX external data adds the rules its loaders enforce (no link at all on the path, no hard link).
"""

from __future__ import annotations

import os
import stat

from quantgate.core import remote

# top-level folder prefixes of a Hugging Face hub cache repo (huggingface_hub's cache layout)
HF_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


def is_inside(real: str, real_root: str) -> bool:
    """`real` is `real_root` or below it (both already realpath'd)."""
    try:
        return os.path.commonpath([real_root, real]) == real_root
    except ValueError:  # different drives
        return False


def hf_blobs_root(real_folder: str) -> str | None:
    """The `blobs` folder of the Hugging Face cache repo whose `snapshots/` holds `real_folder`."""
    parts = real_folder.split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].startswith(HF_REPO_PREFIXES) and i + 1 < len(parts) and parts[i + 1] == "snapshots":
            repo = os.sep.join(parts[: i + 1]) or os.sep
            blobs = os.path.join(repo, "blobs")
            return blobs if os.path.isdir(blobs) else None
    return None


def allowed_target(real: str, real_root: str) -> bool:
    """A followed link's real target is acceptable for `real_root`: inside it, or an HF cache blob."""
    if is_inside(real, real_root):
        return True
    blobs = hf_blobs_root(real_root)
    return blobs is not None and is_inside(real, os.path.realpath(blobs))


def plain_relative(name: str) -> bool:
    if not name or "\x00" in name or os.path.isabs(name) or name.startswith(("/", "\\")):
        return False
    if len(name) > 1 and name[1] == ":":
        return False
    return ".." not in name.replace("\\", "/").split("/")


def _remote_sibling(folder: str, name: str) -> tuple[str | None, str | None]:
    """A sibling of a remote artifact: the URL (or object key) beside it, when the server or store has it
    (quantgate.core.remote)."""
    from quantgate.core import remote

    try:
        url = remote.join(folder + "/x", name)
        return (url, None) if remote.exists(url) else (None, None)
    except remote.RemoteError as exc:
        return None, f"{name} beside the remote artifact cannot be read: {exc}"


def sibling(folder: str | os.PathLike[str], name: str) -> tuple[str | None, str | None]:
    """(path to open, None) when `name` beside `folder` may be read; (None, None) when there is no
    such file; (None, why) when it exists but the confinement rule refuses it."""
    folder = os.fspath(folder)
    if not plain_relative(name):
        return None, f"{name!r} is not a plain relative path inside the folder"
    if remote.is_url(folder):
        return _remote_sibling(folder, name)
    path = os.path.join(folder, name)
    try:
        os.lstat(path)
    except OSError:
        return None, None
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    if not allowed_target(real, real_folder):
        return None, f"{name} resolves to {real}, outside the folder {real_folder}; not read"
    try:
        st = os.stat(path)
    except OSError as exc:
        return None, f"{name} cannot be examined: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return None, f"{name} is not a regular file; not read"
    return path, None
