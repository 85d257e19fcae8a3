"""Discovery: the artifacts under the given paths (by content, never by extension), what was not
gated and why, manifest hints, shards (docs/discovery.md)."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quantgate.core.remote import is_url
from quantgate.formats import MODEL_FORMATS
from quantgate.formats.sniff import LFS_POINTER, MANIFEST, MODEL_EXTENSIONS, Sniffed, sniff
from quantgate.gate import Artifact, UsageError

if TYPE_CHECKING:  # annotations only; the policy module pulls in tomllib, difflib and the schema loader
    from pathlib import Path


# folders a scan never enters: version control, virtual environments, caches
SKIPPED_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".mypy_cache"}


def display_path(path: str | os.PathLike[str]) -> str:
    """`path` resolved, relative to the working directory when it lies inside it (a URL: without
    its credentials)."""
    if isinstance(path, str) and path.startswith("hf://"):
        return path
    if is_url(path):
        from quantgate.core.remote import display_url

        return display_url(str(path))
    full = os.path.realpath(path)
    cwd = os.path.realpath(os.getcwd())
    if os.path.normcase(full) == os.path.normcase(cwd):
        return "."
    inside = os.path.join(cwd, "")  # with one trailing separator
    if os.path.normcase(full).startswith(os.path.normcase(inside)):
        return full[len(inside) :]
    return full


def _excluded(shown: str, patterns: Sequence[str]) -> bool:
    name = os.path.basename(shown)
    return any(fnmatch.fnmatch(shown, p) or fnmatch.fnmatch(name, p) for p in patterns)


# why a path under a scanned folder was not gated; `unreadable_dir` means part of the folder could
# not be read, so the run cannot PASS (it is an ERROR); the others are reported and do not fail it
SKIP_FIFO, SKIP_SOCKET, SKIP_DEVICE, SKIP_OTHER = "fifo", "socket", "device", "not_a_file"
SKIP_BROKEN_LINK, SKIP_LINK_LOOP, SKIP_DUPLICATE = "broken_symlink", "symlink_loop", "duplicate"
SKIP_UNREADABLE_DIR, SKIP_UNREADABLE = "unreadable_dir", "unreadable"
SKIP_SPLIT_SHARD = "split_shard"  # shard k > 1 of a GGUF split set, gated through its first shard
FATAL_SKIPS = (SKIP_UNREADABLE_DIR,)


@dataclass
class Found:
    """A regular file the walk reached: `path` as given (links not resolved), `real` its target."""

    path: Path
    real: str
    link: bool  # the path, or a folder link on the way to it, is a symbolic link
    display: str  # the scanned folder as shown, then the path below it as walked (links kept)


def link_display(path: str | os.PathLike[str]) -> str:
    """Display of a path whose last component may be a link: the folder resolved, the name kept."""
    folder, name = os.path.split(os.path.abspath(path))
    shown = display_path(folder)
    return name if shown == "." else os.path.join(shown, name)


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return SKIP_FIFO
    if stat.S_ISSOCK(mode):
        return SKIP_SOCKET
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return SKIP_DEVICE
    return SKIP_OTHER


def _skip(skipped: list[dict[str, str]], shown: str, reason: str, detail: str) -> None:
    skipped.append({"path": shown, "reason": reason, "detail": detail})


def _walk(root: Path, skipped: list[dict[str, str]]) -> Iterable[Found]:
    """Regular files under `root`, links followed (to files and folders), never opening anything.

    Folders are visited once by (device, inode), so a link back to an ancestor is a reported
    `symlink_loop`, not a hang; FIFOs, sockets, devices, broken links and folders that cannot be
    listed go to `skipped` with their reason.
    """
    import errno
    from pathlib import Path

    shown_root = link_display(root) if os.path.islink(root) else display_path(root)

    def shown(path: Path) -> str:
        below = os.path.relpath(path, root)
        if below == ".":
            return shown_root
        return below if shown_root == "." else os.path.join(shown_root, below)

    try:
        top = os.stat(root)
    except OSError as exc:
        _skip(skipped, shown_root, SKIP_UNREADABLE_DIR, exc.strerror or str(exc))
        return
    visited = {(top.st_dev, top.st_ino)}
    stack: list[tuple[Path, bool]] = [(root, False)]
    while stack:
        folder, via_link = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            _skip(skipped, shown(folder), SKIP_UNREADABLE_DIR, f"cannot list the folder: {exc.strerror or exc}")
            continue
        subdirs: list[tuple[Path, bool]] = []
        for entry in entries:
            path = Path(folder) / entry.name
            try:
                lst = entry.stat(follow_symlinks=False)
                is_link = stat.S_ISLNK(lst.st_mode)
                st = os.stat(path) if is_link else lst
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    _skip(skipped, shown(path), SKIP_LINK_LOOP, "a loop of symbolic links: never reaches a file")
                elif exc.errno == errno.ENOENT and os.path.islink(path):
                    _skip(skipped, shown(path), SKIP_BROKEN_LINK, "the symbolic link's target does not exist")
                else:
                    _skip(skipped, shown(path), SKIP_UNREADABLE, exc.strerror or str(exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                if entry.name in SKIPPED_DIRS:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    real, here = os.path.realpath(path), os.path.realpath(folder)
                    if is_link and _inside(here, real):
                        _skip(skipped, shown(path), SKIP_LINK_LOOP, "a folder link to a folder that contains it")
                    continue  # a second way into a folder already walked: its files are reported once
                visited.add(key)
                subdirs.append((path, via_link or is_link))
            elif stat.S_ISREG(st.st_mode):
                yield Found(path, os.path.realpath(path), via_link or is_link, shown(path))
            else:
                _skip(skipped, shown(path), _kind_of(st.st_mode), "not a regular file; never opened")
        stack.extend(reversed(subdirs))


def _inside(real: str, real_root: str) -> bool:
    from quantgate.core.confine import is_inside

    return is_inside(real, real_root)


def _path_rank(item: Found) -> int:
    """Which of two paths to one file names it (lowest wins): the file's own path, then a link, then a
    Hugging Face cache blob (its snapshot link carries the file name and the config.json beside it)."""
    from quantgate.core.confine import HF_REPO_PREFIXES

    if item.link:
        return 1
    parent = os.path.dirname(item.real)
    repo = os.path.basename(os.path.dirname(parent))
    return 2 if os.path.basename(parent) == "blobs" and repo.startswith(HF_REPO_PREFIXES) else 0


def discover(
    paths: Sequence[str],
    exclude: Sequence[str] = (),
    skipped: list[dict[str, str]] | None = None,
    split_sets: bool = True,
) -> list[Artifact]:
    """Artifacts under the given paths, recognised by content.

    A file named on the command line is always an artifact (an unrecognisable one fails
    integrity). In a scanned folder, a file is an artifact when its content is a model format or
    an LFS pointer, or when it is empty/unrecognisable but named like a model (so a truncated
    `model.gguf` is reported, while a README is not). Symbolic links are followed to regular files
    and gated under the path the user gave; what is not gated (a FIFO, a socket, a device, a broken
    link, a link loop, a folder that cannot be listed, a second link to a file already gated) is
    appended to `skipped` as {path, reason, detail}. Nothing but a regular file is ever opened.
    With `split_sets`, shards 2..N of a GGUF split set whose first shard is an artifact are gated
    through it (`split_shard` in `skipped`); without (`quantgate manifest`), every shard is listed.
    """
    from pathlib import Path

    from quantgate.core.confine import allowed_target

    skipped = [] if skipped is None else skipped
    own: list[dict[str, str]] = []
    found: dict[str, tuple[Artifact, int]] = {}  # real path -> (artifact, _path_rank of its path)
    for given in paths:
        if is_url(given) or given.startswith("hf://"):
            _discover_url(given, found, exclude, own)
            continue
        root = Path(given)
        if not root.exists():
            raise UsageError(f"path not found: {given}")
        real_root = os.path.realpath(root)
        explicit = not root.is_dir()
        if explicit:
            st = os.stat(root)
            if not stat.S_ISREG(st.st_mode):
                _skip(own, link_display(root), _kind_of(st.st_mode), "not a regular file; never opened")
                continue
            linked = root.is_symlink()
            candidates = [Found(root, real_root, linked, link_display(root) if linked else display_path(root))]
        else:
            candidates = list(_walk(root, own))
        for item in candidates:
            path = item.path
            if _excluded(item.display, exclude):
                continue
            sniffed = sniff(path)
            if not explicit and not _is_artifact(path, sniffed):
                continue
            artifact = Artifact(
                os.path.join(os.path.realpath(path.parent), path.name) if item.link else item.real,
                item.display,
                sniffed,
                os.stat(path).st_size if sniffed.format != "unreadable" else 0,
                real=item.real,
            )
            if item.link and not explicit and not allowed_target(item.real, real_root):
                artifact.hints["link_findings"] = [{
                    "code": "LINK_OUTSIDE_ROOT",
                    "message": f"{artifact.display} is a symbolic link to {item.real}, outside the scanned folder "
                    f"{real_root}: the gated file is not part of the folder; ship the file itself",
                }]
            rank = _path_rank(item)
            if item.real in found:  # one file, two paths: gate it once, under the better path
                first, first_rank = found[item.real]
                if rank < first_rank:
                    found[item.real] = (artifact, rank)
                    first, artifact = artifact, first
                own.append({"path": artifact.display, "reason": SKIP_DUPLICATE,
                            "detail": f"the same file as {first.display}, gated once"})
                continue
            found[item.real] = (artifact, rank)
    artifacts = [a for a, _ in found.values()]
    if split_sets:
        artifacts = _fold_split_sets(artifacts, own)
    own.sort(key=lambda s: s["path"])
    skipped.extend(s for s in own if not _excluded(s["path"], exclude))
    return sorted(artifacts, key=lambda a: a.display)


def _fold_split_sets(artifacts: list[Artifact], skipped: list[dict[str, str]]) -> list[Artifact]:
    """`artifacts` without shards 2..N of a GGUF split set whose first shard is among them: the first
    shard reads the set (quantgate.formats.gguf.reader), so the model is gated, and counted, once. With shard
    1 absent the others stay artifacts, and their findings say what is wrong."""
    named = [a for a in artifacts if a.path.endswith(".gguf") and "-of-" in os.path.basename(a.path)]
    if not named:
        return artifacts
    from quantgate.formats.gguf.reader import split_name

    firsts: dict[tuple[str, str, int], Artifact] = {}
    shards: dict[str, tuple[str, str, int, int]] = {}
    for a in named:
        parts = split_name(os.path.basename(a.path))
        if parts is None:
            continue
        prefix, no, count = parts
        key = (os.path.dirname(a.path), prefix, count)
        if no == 1 and count > 1 and a.format == "gguf":
            firsts[key] = a
        elif 2 <= no <= count:
            shards[a.path] = (*key, no)
    kept = []
    for a in artifacts:
        where = shards.get(a.path)
        first = firsts.get(where[:3]) if where else None
        if first is None:
            kept.append(a)
            continue
        _skip(skipped, a.display, SKIP_SPLIT_SHARD,
              f"shard {where[3]} of {where[2]} of a split GGUF model, gated with the set through {first.display}")
    return kept


def _discover_url(url: str, found: dict[str, tuple[Artifact, int]], exclude: Sequence[str] = (),
                  skipped: list[dict[str, str]] | None = None) -> None:
    """An http(s) URL or a store object is one artifact, read by range (quantgate.core.remote); one that
    cannot be opened is gated as unreadable, so that integrity reports why. An `hf://` repo, or an
    `s3://`/`gs://` prefix, is listed and every model file in it gated."""
    from quantgate.core.remote import RemoteError, display_url, hf_list, is_hf, open_file

    listed = _store_objects(url, exclude, [] if skipped is None else skipped)
    if is_hf(url):  # every model file of a Hub repo, at one commit
        try:
            listed = hf_list(url, MODEL_EXTENSIONS)
        except RemoteError as exc:
            raise UsageError(str(exc)) from None
        if not listed:
            raise UsageError(f"{url}: the repo holds no {', '.join(MODEL_EXTENSIONS)} file")
    elif listed is None:
        listed = [(url, display_url(url))]
    for each, shown in listed:
        if each in found:
            continue
        sniffed = sniff(each)
        size = open_file(each).size if sniffed.format != "unreadable" else 0
        found[each] = (Artifact(each, shown, sniffed, size, real=each), 0)


def _store_objects(url: str, exclude: Sequence[str], skipped: list[dict[str, str]]) -> list[tuple[str, str]] | None:
    """(URL, display) of every model object under an `s3://` or `gs://` prefix, by the rules of a local
    folder's scan (a model file's extension, as for an `hf://` repo; SKIPPED_DIRS; --exclude); None when
    `url` is no store prefix (one object, or nothing there: gated as unreadable). A key that is not a
    plain path below the prefix is never read (`not_a_file` in `skipped`)."""
    from quantgate.core import remote

    if not remote.is_fsspec(url):
        return None
    key = url.split("://", 1)[1].partition("/")[2]
    if key.strip("/") and not url.endswith("/"):  # an object, unless the store says it is none
        try:
            remote.open_file(url)
            return None
        except remote.RemoteError as exc:
            if exc.status != 404:
                return None
    try:
        base, names = remote.store_list(url)
    except remote.RemoteError as exc:
        raise UsageError(str(exc)) from None
    if not names:  # as a local path that does not exist; an object that is not there is gated unreadable
        if key.strip("/") and not url.endswith("/"):
            return None
        raise UsageError(f"{remote.display_url(url)}: no object under the prefix")
    shown_base = remote.display_url(base)
    out = []
    for rel in names:
        if not rel or rel.endswith("/"):
            continue  # a folder marker (a console's `folder/` object), no file
        shown = shown_base + rel
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts) or any(c in rel for c in "\x00\\?#"):
            _skip(skipped, shown, SKIP_OTHER, "its key is not a plain path below the prefix (an empty, `.` or "
                  "`..` segment, a NUL, `\\`, `?` or `#`); never read")
            continue
        if any(p in SKIPPED_DIRS for p in parts[:-1]) or not rel.lower().endswith(MODEL_EXTENSIONS):
            continue
        if not _excluded(shown, exclude):
            out.append((base + rel, shown))
    return out  # none: as a local folder without a model file (NO_INPUT)


def _is_artifact(path: Path, sniffed: Sniffed) -> bool:
    if sniffed.format in MODEL_FORMATS or sniffed.format in (LFS_POINTER, MANIFEST):
        return True
    return path.suffix.lower() in MODEL_EXTENSIONS


def attach_manifest_hints(artifacts: Sequence[Artifact]) -> None:
    """Give each artifact what a manifest beside it claims (its parameter count, for size-heuristic)."""
    from pathlib import Path

    from quantgate.manifest.check import ManifestError, artifact_hints, load_manifest

    by_path = {a.path: a for a in artifacts}
    by_path.update({a.real: a for a in artifacts if a.real})
    for manifest in (a for a in artifacts if a.format == MANIFEST):
        try:
            doc, _ = load_manifest(manifest.path)
        except (ManifestError, OSError):
            continue  # the manifest guard reports it
        for target, hints in artifact_hints(doc, Path(manifest.path).parent).items():
            artifact = by_path.get(target)
            if artifact is not None:
                for key, value in hints.items():
                    artifact.hints.setdefault(key, value)


def select_shard(artifacts: list[Artifact], shard: tuple[int, int] | None) -> list[Artifact]:
    """Artifact i goes to shard (i mod n) + 1 of the sorted list: stable across runners."""
    if shard is None:
        return artifacts
    k, n = shard
    return [a for i, a in enumerate(artifacts) if i % n == k - 1]
