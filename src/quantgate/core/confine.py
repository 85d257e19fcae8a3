"""One confinement rule for every file read beside an artifact, and for the files discovery follows
(docs/architecture.md#hostile-input, docs/discovery.md).

A file named beside an artifact (config.json, a sharded index and its shards, a manifest beside the
artifact and the files it lists, ONNX external data) is read only when, checked with `lstat`/`realpath`
before any open:
  - its name is a plain relative path: not empty, no NUL, not absolute, no `..` component (`/` and `\\`
    both separate components, so that a name written on Windows is checked as the file it names there);
  - its real path lies inside the artifact's real folder, or, for a Hugging Face cache snapshot, inside
    that cache repo's `blobs/` (the layout links every file of `models--org--name/snapshots/<rev>/` to
    `../../blobs/<sha>` by design);
  - it is a regular file once links are followed (a FIFO, socket or device is never opened).
A caller may be stricter: `links=False` refuses any symbolic link on the path (ONNX external data, a
manifest's artifacts), `hard_links=False` a file with more than one hard link (ONNX external data).

`confine` decides; each caller keeps its own finding code and message for the refusal it is given
(`SIBLING_NOT_READ`, `ONNX_EXTERNAL_*`, `MANIFEST_PATH_*`, `FIDELITY_DEQUANT_FAILED`).
Beside a remote artifact there are no links: the URL (or object key) beside it is looked up with
`quantgate.core.remote.join`/`exists`.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from quantgate.core import remote

# top-level folder prefixes of a Hugging Face hub cache repo (huggingface_hub's cache layout)
HF_REPO_PREFIXES = ("models--", "datasets--", "spaces--")

# why `confine` refused a name, in the order it checks
INVALID = "invalid"  # empty, a NUL byte, or no component left
ABSOLUTE = "absolute"
ESCAPES = "escapes"  # its real path leaves the folder (through `..` or a link)
TRAVERSAL = "traversal"  # a `..` component that stays inside
LINK = "link"  # a symbolic link on the path (links=False)
MISSING = "missing"
UNEXAMINABLE = "unexaminable"  # lstat/stat failed for another reason (or the store did not answer)
NOT_REGULAR = "not_regular"  # a folder, FIFO, socket or device
HARD_LINK = "hard_link"  # more than one hard link (hard_links=False)


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


@dataclass(frozen=True)
class Confined:
    """What `confine` decided for one name: `path` to open when allowed, else `refused` (one of the
    constants above) with `detail`, a sentence a caller may append to its own message."""

    path: str | None = None
    refused: str | None = None
    detail: str = ""
    real: str = ""  # the resolved path (local), for messages and for de-duplicating files
    size: int | None = None  # local files only
    link: str = ""  # the component that is a symbolic link (LINK, and ESCAPES through a link)
    nlink: int = 1
    reason: str = ""  # the OS's or the store's own words (UNEXAMINABLE)
    dotdot: bool = False  # the name has a `..` component (whether or not it stays inside)


def _name_parts(name: str) -> tuple[list[str], Confined | None]:
    """The components of a plain relative name, or the refusal of a name that is not one."""
    if not name or "\x00" in name:
        return [], Confined(refused=INVALID, detail="is not a file name" if not name else "contains a NUL byte")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return [], Confined(refused=ABSOLUTE, detail="is absolute")
    parts = [p for p in re.split(r"[\\/]", name) if p not in ("", ".")]
    if not parts:
        return [], Confined(refused=INVALID, detail="names no file")
    return parts, None


def _remote(folder: str, parts: list[str], dotdot: bool) -> Confined:
    """Beside a remote artifact: the URL (or object key) beside it, when the server or store has it."""
    if dotdot:
        return Confined(refused=TRAVERSAL, detail="contains `..`", dotdot=True)
    try:
        url = remote.join(folder + "/x", "/".join(parts))
        if remote.exists(url):
            return Confined(path=url, real=url)
        return Confined(refused=MISSING, detail="does not exist beside the remote artifact")
    except remote.RemoteError as exc:
        return Confined(refused=UNEXAMINABLE, detail=f"cannot be read: {exc}", reason=str(exc))


def _first_link(folder: str, parts: list[str]) -> str:
    current = folder
    for part in parts:
        current = os.path.join(current, part)
        if os.path.islink(current):
            return part
    return ""


def confine(folder: str | os.PathLike[str], name: str, *, links: bool = True, hard_links: bool = True) -> Confined:
    """May `name` beside `folder` be read? The one rule (module docstring): the checks run in the order of
    the constants above, with `lstat`/`realpath`/`stat` only; nothing is opened."""
    folder = os.fspath(folder)
    parts, refusal = _name_parts(name)
    if refusal is not None:
        return refusal
    dotdot = ".." in parts
    if remote.is_url(folder):
        return _remote(folder, parts, dotdot)
    path = os.path.join(folder, *parts)
    real_folder, real = os.path.realpath(folder), os.path.realpath(path)
    # the Hugging Face blobs/ allowance is for links the cache layout makes, never for a `..` name
    if not (is_inside(real, real_folder) if dotdot else allowed_target(real, real_folder)):
        return Confined(refused=ESCAPES, detail=f"resolves to {real}, outside the folder {real_folder}",
                        real=real, link=_first_link(folder, parts), dotdot=dotdot)
    if dotdot:
        return Confined(refused=TRAVERSAL, detail="contains `..`", real=real, dotdot=True)
    link = "" if links else _first_link(folder, parts)
    if link:
        return Confined(refused=LINK, detail=f"goes through the symbolic link {link!r}", real=real, link=link)
    try:
        st = os.stat(path) if links else os.lstat(path)
    except FileNotFoundError:
        return Confined(refused=MISSING, detail="does not exist", real=real)
    except OSError as exc:
        reason = str(exc.strerror or exc)
        return Confined(refused=UNEXAMINABLE, detail=f"cannot be examined: {reason}", real=real, reason=reason)
    if not stat.S_ISREG(st.st_mode):
        return Confined(refused=NOT_REGULAR, detail="is not a regular file", real=real)
    if not hard_links and st.st_nlink > 1:
        return Confined(refused=HARD_LINK, detail=f"has {st.st_nlink} hard links", real=real, nlink=st.st_nlink)
    return Confined(path=path, real=real, size=st.st_size, nlink=st.st_nlink)


def sibling(folder: str | os.PathLike[str], name: str) -> tuple[str | None, str | None]:
    """(path to open, None) when `name` beside `folder` may be read; (None, None) when there is no
    such file; (None, why) when it exists but the confinement rule refuses it (`SIBLING_NOT_READ`)."""
    got = confine(folder, name)
    if got.path is not None or got.refused == MISSING:
        return got.path, None
    if got.refused in (INVALID, ABSOLUTE, TRAVERSAL) or (got.refused == ESCAPES and got.dotdot):
        return None, f"{name!r} is not a plain relative path inside the folder"
    if got.refused == UNEXAMINABLE:
        where = " beside the remote artifact" if remote.is_url(os.fspath(folder)) else ""
        return None, f"{name}{where} {got.detail}"
    return None, f"{name} {got.detail}; not read"
