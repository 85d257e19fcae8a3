"""The gate: find artifacts, run the guards that apply, apply the policy, build one report.

Statuses and exit codes (docs/architecture.md#statuses-and-exit-codes):
  0 every required guard reached a verdict and none failed (WARN allowed unless fail_on = warn)
  1 at least one FAIL          2 at least one ERROR, or a required guard skipped (beats 1)
  3 no artifact, or no guard applied                     4 usage (raised before a report exists)
`status` is what a guard saw; `gate_status` is what the policy made of it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quantgate import SCHEMA_VERSION, __version__
from quantgate.formats.sniff import LFS_POINTER, MANIFEST, MODEL_EXTENSIONS, MODEL_FORMATS, Sniffed, sniff
from quantgate.progress import log
from quantgate.remote import is_url
from quantgate.result import (
    BLOCKED_BY_INTEGRITY,
    DEPENDENCY_MISSING,
    DISABLED,
    ERROR,
    FAIL,
    NOT_APPLICABLE,
    PASS,
    SKIP,
    WARN,
    ArtifactInfo,
    GuardResult,
)
from quantgate.validators import get_guard, guard_ids
from quantgate.validators.base import GuardContext, run_guard

if TYPE_CHECKING:  # annotations only; the policy module pulls in tomllib, difflib and the schema loader
    import datetime as dt
    from pathlib import Path

    from quantgate.policy import Policy, Waiver

EXIT_PASS, EXIT_FAIL, EXIT_ERROR, EXIT_NO_INPUT, EXIT_USAGE = 0, 1, 2, 3, 4
VERDICT_EXIT = {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "ERROR": EXIT_ERROR, "NO_INPUT": EXIT_NO_INPUT}
# skip reasons that do not make a required guard an ERROR: the guard does not apply, or the
# artifact already failed integrity (the artifact's fault, reported as that FAIL)
BENIGN_SKIPS = (NOT_APPLICABLE, DISABLED, BLOCKED_BY_INTEGRITY)
# skip reasons that make a guard the policy bounds (require/warn) an ERROR even when it is not
# required: the policy asked for its numbers and the check never ran, which must not read as a PASS
BOUNDED_ERROR_SKIPS = (DEPENDENCY_MISSING,)
SKIPPED_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".mypy_cache"}
ENGINE_PACKAGES = (
    "executorch",
    "torch",
    "torchao",
    "onnx",
    "onnxruntime",
    "gguf",
    "safetensors",
    "numpy",
    "jsonschema",
)
REPORT_SCHEMA_URL = "https://quantgate.dev/schemas/report.schema.json"


class UsageError(Exception):
    """Bad invocation: exit 4."""


@dataclass
class Artifact:
    path: str  # absolute
    display: str  # as shown in reports: relative to the working directory where possible
    sniffed: Sniffed
    size: int
    # what other files say about this artifact (a manifest's parameter count), for the guards
    hints: dict[str, Any] = field(default_factory=dict)
    # the real file (links resolved): what two paths to one file share, and what waivers name
    real: str = ""

    @property
    def format(self) -> str:
        return self.sniffed.format


# ---------------------------------------------------------------------------------------------
# discovery


def display_path(path: str | os.PathLike[str]) -> str:
    """`path` resolved, relative to the working directory when it lies inside it (a URL: without
    its credentials)."""
    if isinstance(path, str) and path.startswith("hf://"):
        return path
    if is_url(path):
        from quantgate.remote import display_url

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
    from quantgate.confine import is_inside

    return is_inside(real, real_root)


def _path_rank(item: Found) -> int:
    """Which of two paths to one file names it (lowest wins): the file's own path, then a link, then a
    Hugging Face cache blob (its snapshot link carries the file name and the config.json beside it)."""
    from quantgate.confine import HF_REPO_PREFIXES

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

    from quantgate.confine import allowed_target

    skipped = [] if skipped is None else skipped
    own: list[dict[str, str]] = []
    found: dict[str, tuple[Artifact, int]] = {}  # real path -> (artifact, _path_rank of its path)
    for given in paths:
        if is_url(given) or given.startswith("hf://"):
            _discover_url(given, found)
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
    shard reads the set (quantgate.formats.gguf), so the model is gated, and counted, once. With shard
    1 absent the others stay artifacts, and their findings say what is wrong."""
    named = [a for a in artifacts if a.path.endswith(".gguf") and "-of-" in os.path.basename(a.path)]
    if not named:
        return artifacts
    from quantgate.formats.gguf import split_name

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


def _discover_url(url: str, found: dict[str, tuple[Artifact, int]]) -> None:
    """An http(s) URL is one artifact, read by range (quantgate.remote); one that cannot be opened is
    gated as unreadable, so that integrity reports why."""
    from quantgate.remote import RemoteError, display_url, hf_list, is_hf, open_file

    if is_hf(url):  # every model file of a Hub repo, at one commit
        try:
            listed = hf_list(url, MODEL_EXTENSIONS)
        except RemoteError as exc:
            raise UsageError(str(exc)) from None
        if not listed:
            raise UsageError(f"{url}: the repo holds no {', '.join(MODEL_EXTENSIONS)} file")
    else:
        listed = [(url, display_url(url))]
    for each, shown in listed:
        if each in found:
            continue
        sniffed = sniff(each)
        size = open_file(each).size if sniffed.format != "unreadable" else 0
        found[each] = (Artifact(each, shown, sniffed, size, real=each), 0)


def _is_artifact(path: Path, sniffed: Sniffed) -> bool:
    if sniffed.format in MODEL_FORMATS or sniffed.format in (LFS_POINTER, MANIFEST):
        return True
    return path.suffix.lower() in MODEL_EXTENSIONS


def attach_manifest_hints(artifacts: Sequence[Artifact]) -> None:
    """Give each artifact what a manifest beside it claims (its parameter count, for size-heuristic)."""
    from pathlib import Path

    from quantgate.manifest import ManifestError, artifact_hints, load_manifest

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


# ---------------------------------------------------------------------------------------------
# one artifact


def _waivers_for(artifact: Artifact, policy: Policy, guard_id: str | None = None) -> list[Waiver]:
    out = []
    for waiver in policy.waivers:
        target = (policy.root / waiver.artifact).resolve()
        if str(target) in (artifact.path, artifact.real) and (guard_id is None or waiver.guard == guard_id):
            out.append(waiver)
    return out


def gate_decision(
    result: dict[str, Any],
    *,
    required: bool,
    fail_on: str,
    waivers: Sequence[Waiver],
    sha256: str | None,
    today: dt.date,
    bounded: bool = False,
) -> dict[str, Any]:
    """Add `gate_status`, `required` and the waiver (applied or rejected) to a result dict.

    `bounded`: the policy sets bounds on this guard's metrics; such a guard that could not run
    here (its extra is not installed) is an ERROR, like a required one."""
    status = result["status"]
    gate = status
    result["required"] = required
    if status == SKIP and required and result["skip"]["reason"] not in BENIGN_SKIPS:
        gate = ERROR
    elif status == SKIP and bounded and result["skip"]["reason"] in BOUNDED_ERROR_SKIPS:
        gate = ERROR
        result["message"] = (
            f"the policy bounds {result['guard']}'s metrics but it cannot run here: {result['skip']['detail']}"
        )
    elif status == WARN and fail_on == "warn":
        gate = FAIL
    if gate in (FAIL, WARN) and status in (FAIL, WARN):
        for waiver in waivers:
            if waiver.expires < today:
                result["waiver_rejected"] = {
                    "reason": f"expired on {waiver.expires.isoformat()}",
                    "waiver": waiver.to_dict(),
                }
            elif sha256 is None or waiver.sha256 != sha256:
                result["waiver_rejected"] = {
                    "reason": "sha256 does not match the artifact (it changed since the waiver was granted)",
                    "waiver": waiver.to_dict(),
                }
            else:
                result.pop("waiver_rejected", None)
                result["waiver"] = waiver.to_dict()
                gate = PASS
                break
    result["gate_status"] = gate
    return result


def artifact_context(artifact: Artifact, policy: Policy, hash_all: bool) -> GuardContext:
    """The artifact as its guards see it (read once, shared by them); hashed when asked or when a waiver
    names it (a waiver holds only for the bytes it was granted on)."""
    ctx = GuardContext(artifact.path, artifact.sniffed, artifact.size, artifact.display)
    ctx.hints.update(artifact.hints)
    if (hash_all or _waivers_for(artifact, policy)) and artifact.format not in ("unreadable",):
        from quantgate.hashing import sha256_file  # hashlib: only when hashing

        try:
            ctx.sha256 = sha256_file(artifact.path, artifact.display)
        except OSError as exc:
            log(f"quantgate: cannot hash {artifact.display}: {exc}")
    return ctx


def evaluate_guards(
    ctx: GuardContext,
    artifact: Artifact,
    policy: Policy,
    guards: Sequence[str],
    fail_on: str,
    today: dt.date | None = None,
) -> list[dict[str, Any]]:
    """`guards` on one artifact (its `artifact_context`), each with the gate's decision; never raises."""
    import datetime as dt

    today = today or dt.date.today()
    waivers = _waivers_for(artifact, policy)
    results = []
    for guard_id in guards:
        gp = policy.guard(guard_id)
        if not gp.enabled:
            result = GuardResult.disabled(guard_id, ctx.artifact_info())
        else:
            result = run_guard(get_guard(guard_id), ctx, policy.guard_config(guard_id))
        results.append(
            gate_decision(
                result.to_dict(),
                required=gp.required,
                fail_on=fail_on,
                waivers=[w for w in waivers if w.guard == guard_id],
                sha256=ctx.sha256,
                today=today,
                bounded=bool(gp.require or gp.warn),
            )
        )
    return results


def evaluate_artifact(
    artifact: Artifact,
    policy: Policy,
    selected: Sequence[str],
    hash_all: bool,
    fail_on: str,
    today: dt.date | None = None,
) -> list[dict[str, Any]]:
    """Every selected guard on one artifact, with the gate's decision; never raises."""
    return evaluate_guards(artifact_context(artifact, policy, hash_all), artifact, policy, selected, fail_on, today)


def _crash_results(artifact: Artifact, selected: Sequence[str], policy: Policy, why: str) -> list[dict[str, Any]]:
    info = ArtifactInfo(artifact.display, artifact.format, artifact.size)
    out = []
    for guard_id in selected:
        result = GuardResult.crashed(guard_id, info, f"the worker reading {artifact.display} {why}").to_dict()
        result.update(gate_status=ERROR, required=policy.guard(guard_id).required)
        out.append(result)
    return out


def _worker(
    conn: Any, policy: Policy, selected: Sequence[str], hash_all: bool, fail_on: str,
    parent_pid: int | None = None,
) -> None:
    """A long-lived worker: takes batches of artifacts from `conn` until it gets None, sends back one
    ("done", path, results, startups) per artifact, so a crash costs only the artifact it was on. Its
    runtime runners live as long as it does: their start-up is paid once per worker, not per artifact."""
    import signal

    from quantgate.runtime import box

    # a worker dies with the gate: SIGTERM when the parent dies (Linux), and on SIGTERM it kills the
    # process groups of the runtime children it started before it exits
    def _stop(signum: int, _frame: Any) -> None:
        box.kill_all()
        # os._exit, not SystemExit: a forked worker must not run the parent's inherited atexit handlers
        # and buffers, nor unwind from whatever frame the signal interrupted (a reader, a pipe send)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it SIGTERMs us
    box.die_with_parent(signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the death signal was armed
    box.reset_after_fork()  # the runners and counts inherited through fork are the parent's
    try:
        while True:
            batch = conn.recv()
            if batch is None:
                break
            for artifact in batch:
                out = evaluate_artifact(artifact, policy, selected, hash_all, fail_on)
                conn.send(("done", artifact.path, out, box.startups()))
    except (EOFError, OSError):
        pass
    finally:
        box.close_servers()
        with contextlib.suppress(OSError):
            conn.close()


# the guards that start a runtime (seconds of start-up and run per artifact); the others read headers
HEAVY_GUARDS = ("pte-inspector", "fidelity")
# light artifacts go to workers in batches: about this many batches per worker balance the load
BATCHES_PER_WORKER = 4


def heavy_flags(artifacts: Sequence[Artifact], policy: Policy, selected: Sequence[str]) -> list[bool]:
    """Per artifact: True when a runtime guard will run on it (enabled, applies, installed). What a
    guard needs is looked up once per guard and format, not per artifact (find_spec is not free)."""
    runtime = [g for g in selected if g in HEAVY_GUARDS and policy.guard(g).enabled
               and get_guard(g).missing_dependency() is None]
    referenced = False
    if "fidelity" in runtime:  # without a reference fidelity SKIPs at once; with one it decodes and runs
        config = policy.guard_config("fidelity")
        referenced = bool(config.param("reference") or config.param("references"))
    flags = []
    for artifact in artifacts:
        heavy = False
        for guard_id in runtime:
            if not get_guard(guard_id).applies_to(artifact.format):
                continue
            if guard_id != "fidelity" or referenced or artifact.hints.get("reference"):
                heavy = True
                break
        flags.append(heavy)
    return flags


def auto_jobs(artifacts: Sequence[Artifact], policy: Policy, selected: Sequence[str]) -> int:
    """`--jobs auto`: serial when only header scans apply (a process costs more than they do), else one
    worker per heavy artifact up to the cores."""
    heavy = sum(heavy_flags(artifacts, policy, selected))
    return 1 if heavy == 0 else max(1, min(os.cpu_count() or 1, heavy))


def plan_batches(artifacts: Sequence[Artifact], policy: Policy, selected: Sequence[str],
                 jobs: int) -> list[list[Artifact]]:
    """Heavy artifacts one per batch, first; light ones in about BATCHES_PER_WORKER batches per worker."""
    flags = heavy_flags(artifacts, policy, selected)
    heavy = [a for a, h in zip(artifacts, flags, strict=True) if h]
    light = [a for a, h in zip(artifacts, flags, strict=True) if not h]
    batches = [[a] for a in heavy]
    if light:
        count = max(1, min(len(light), jobs * BATCHES_PER_WORKER))
        size = -(-len(light) // count)
        batches += [light[i:i + size] for i in range(0, len(light), size)]
    return batches


class _Stopped(BaseException):
    """The gate got SIGTERM/SIGINT while workers ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_workers(procs: Iterable[Any]) -> None:
    """SIGTERM every running worker (each kills its runtime boxes), then SIGKILL the ones still there."""
    procs = [p for p in procs if p.is_alive()]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + 5
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


class _Pool:
    """Long-lived worker processes fed batches of artifacts (see `_run_parallel`). Each running worker's
    state: [its pipe, its batch left (the first artifact is being gated), when it last sent news, its
    runtime start counts]."""

    def __init__(self, policy: Policy, selected: Sequence[str], hash_all: bool, fail_on: str, jobs: int,
                 pending: list[list[Artifact]], on_done: Callable[[Artifact, list[dict[str, Any]]], None]) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self.worker_args = (policy, selected, hash_all, fail_on, os.getpid())
        self.policy, self.selected, self.jobs, self.pending, self.on_done = policy, selected, jobs, pending, on_done
        # the watchdog for a child stuck where signals cannot reach it (inside native code): per artifact
        self.deadline_s = sum(policy.guard_config(g).timeout_s or 0 for g in selected) + 60
        self.counts = {"workers": 0, "batches": len(pending), "runtime_startups": 0, "runtime_restarts": 0}
        self.running: dict[Any, list[Any]] = {}
        self.results: dict[str, list[dict[str, Any]]] = {}

    def retire(self, proc: Any) -> None:
        state = self.running.pop(proc)
        self.counts["runtime_startups"] += state[3].get("startups", 0)
        self.counts["runtime_restarts"] += state[3].get("restarts", 0)
        with contextlib.suppress(OSError):
            state[0].close()

    def hand_out(self) -> None:
        """Batches to idle workers first (a worker with nothing left is told to exit), then to new workers
        up to `jobs`."""
        for proc, state in list(self.running.items()):
            if not state[1] and self.pending:
                state[1] = self.pending.pop(0)
                state[2] = time.monotonic()
                state[0].send(state[1])
            elif not state[1]:
                with contextlib.suppress(OSError):
                    state[0].send(None)  # nothing left: the worker closes its runners and exits
                proc.join(10)
                if proc.is_alive():
                    _stop_workers([proc])
                self.retire(proc)
        while self.pending and len(self.running) < self.jobs:
            parent, child = self.ctx.Pipe(duplex=True)
            proc = self.ctx.Process(target=_worker, args=(child, *self.worker_args))
            proc.start()
            child.close()
            self.counts["workers"] += 1
            batch = self.pending.pop(0)
            self.running[proc] = [parent, batch, time.monotonic(), {}]
            parent.send(batch)

    def collect(self) -> None:
        """Wait up to 0.5 s for news; take each worker's finished artifact, or its death."""
        import multiprocessing.connection  # here: a single `quantgate guard` never pays for it

        finished = multiprocessing.connection.wait([state[0] for state in self.running.values()], timeout=0.5)
        for proc, state in list(self.running.items()):
            conn, batch, since, _ = state
            if not batch:
                continue
            message = None
            if conn in finished:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    message = None
            elif time.monotonic() - since < self.deadline_s:
                continue
            if message is None:
                self.lost(proc, state)
                continue
            _, _path, out, starts = message
            state[3] = starts
            artifact = batch.pop(0)
            state[2] = time.monotonic()
            self.done(artifact, out)

    def lost(self, proc: Any, state: list[Any]) -> None:
        """The worker died (or overran its watchdog) on batch[0]: that artifact is an ERROR, the rest of its
        batch goes back to the queue, to a fresh worker."""
        batch, since = state[1], state[2]
        if proc.is_alive():
            _stop_workers([proc])
        proc.join()
        code = proc.exitcode
        why = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        if time.monotonic() - since >= self.deadline_s:
            why = f"overran its {self.deadline_s:g} s watchdog and was killed"
        artifact = batch.pop(0)
        if batch:
            self.pending.insert(0, batch)
        self.retire(proc)
        self.done(artifact, _crash_results(artifact, self.selected, self.policy, why))

    def done(self, artifact: Artifact, out: list[dict[str, Any]]) -> None:
        self.results[artifact.path] = out
        self.on_done(artifact, out)


def _run_parallel(
    artifacts: Sequence[Artifact],
    policy: Policy,
    selected: Sequence[str],
    hash_all: bool,
    fail_on: str,
    jobs: int,
    on_done: Callable[[Artifact, list[dict[str, Any]]], None],
    stats: dict[str, int] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Artifacts in at most `jobs` long-lived worker processes, fed batches; a crashing worker costs only
    the artifact it was on (the rest of its batch goes back to the queue, to a fresh worker).
    `stats` gets workers (processes started), batches, runtime_startups and runtime_restarts."""
    import signal
    import threading

    pool = _Pool(policy, selected, hash_all, fail_on, jobs, plan_batches(artifacts, policy, selected, jobs), on_done)

    def _on_signal(signum: int, _frame: Any) -> None:
        raise _Stopped(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _on_signal)
    stopped: int | None = None
    try:
        while pool.pending or pool.running:
            pool.hand_out()
            if not pool.running:
                break
            pool.collect()
    except _Stopped as exc:
        stopped = exc.signum
    finally:
        # no worker (nor a runtime child of one) outlives the gate, however the loop ends; a second
        # signal must not cut this short
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        _stop_workers(pool.running)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stats is not None:
        stats.update(pool.counts)
    if stopped is not None:
        # the signal's own meaning, now that the workers are gone: SIGINT -> KeyboardInterrupt, SIGTERM -> exit
        os.kill(os.getpid(), stopped)
        time.sleep(1)
        raise SystemExit(128 + stopped)
    return pool.results


# ---------------------------------------------------------------------------------------------
# the report


def environment() -> dict[str, Any]:
    import platform
    from importlib import metadata  # ~50 ms of imports (email, zipfile): only the gate's report needs it

    packages: dict[str, str | None] = {}
    for name in ENGINE_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages}


def summarize(results: Sequence[dict[str, Any]], artifacts: int) -> dict[str, int]:
    """Counts by gate_status; guards that do not apply to a format are counted apart, not as skips."""
    summary = {
        "artifacts": artifacts,
        "results": len(results),
        PASS: 0,
        FAIL: 0,
        WARN: 0,
        SKIP: 0,
        ERROR: 0,
        "waived": 0,
        "not_applicable": 0,
    }
    for result in results:
        if result["status"] == SKIP and result["skip"]["reason"] == NOT_APPLICABLE:
            summary["not_applicable"] += 1
            continue
        summary[result["gate_status"]] += 1
        if "waiver" in result:
            summary["waived"] += 1
    return summary


def verdict_of(results: Sequence[dict[str, Any]], artifacts: int) -> str:
    applied = [r for r in results if not (r["status"] == SKIP and r["skip"]["reason"] in (NOT_APPLICABLE, DISABLED))]
    if artifacts == 0 or not applied:
        return "NO_INPUT"
    gates = {r["gate_status"] for r in results}
    if ERROR in gates:
        return "ERROR"
    if FAIL in gates:
        return "FAIL"
    return "PASS"


def exit_code_for(verdict: str, report_only: bool) -> int:
    code = VERDICT_EXIT[verdict]
    return EXIT_PASS if report_only and code == EXIT_FAIL else code


def build_report(
    *,
    policy: Policy,
    artifacts: Sequence[Artifact],
    results: Sequence[dict[str, Any]],
    started: float,
    started_at: str,
    report_only: bool,
    fail_on: str,
    shard: tuple[int, int] | None = None,
    paths: Sequence[str] = (),
    artifacts_total: int | None = None,
    skipped: Sequence[dict[str, str]] = (),
    run_stats: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The canonical report. `paths` and `artifacts_total` (artifacts found before sharding) go in
    `inputs`, so that `quantgate merge` can tell a complete set of shards from a partial one."""
    wall_s = round(time.perf_counter() - started, 6)
    sha_by_path = {r["artifact"]["path"]: r["artifact"].get("sha256") for r in results}
    artifact_rows = []
    for a in artifacts:
        row = {"path": a.display, "format": a.format, "size_bytes": a.size}
        if sha_by_path.get(a.display):
            row["sha256"] = sha_by_path[a.display]
        artifact_rows.append(row)
    return assemble_report(
        policy={"path": policy.path, "sha256": policy.sha256, "fail_on": fail_on,
                "coverage_basis": policy.coverage_basis},
        started_at=started_at,
        duration_s=wall_s,
        report_only=report_only,
        shard=f"{shard[0]}/{shard[1]}" if shard else None,
        artifacts=artifact_rows,
        results=results,
        skipped=skipped,
        head={"inputs": {"paths": [display_path(p) for p in paths],
                         "artifacts_total": len(artifacts) if artifacts_total is None else artifacts_total}},
        tail={"cost": audit_cost(results, wall_s, run_stats)},
    )


def assemble_report(
    *,
    policy: dict[str, Any],
    started_at: str,
    duration_s: float,
    report_only: bool,
    shard: str | None,
    artifacts: Sequence[dict[str, Any]],
    results: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, str]],
    problems: bool = False,
    head: dict[str, Any] | None = None,
    tail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report document around its rows, for a run and for a merge of shards alike: the verdict
    (ERROR with `problems`, or when part of a folder was never read), the exit code, the summary.
    `head` goes before the summary, `tail` after the rows."""
    verdict = "ERROR" if problems else verdict_of(results, len(artifacts))
    if any(s["reason"] in FATAL_SKIPS for s in skipped):
        verdict = "ERROR"  # part of the folder was never read: the run cannot vouch for it
    return {
        "$schema": REPORT_SCHEMA_URL,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "quantgate", "version": __version__},
        "policy": policy,
        "environment": environment(),
        "started_at": started_at,
        "duration_s": duration_s,
        "verdict": verdict,
        "exit_code": exit_code_for(verdict, report_only),
        "report_only": report_only,
        "shard": shard,
        **(head or {}),
        "summary": summarize(results, len(artifacts)),
        "artifacts": list(artifacts),
        "results": list(results),
        "skipped": list(skipped),
        **(tail or {}),
    }


def audit_cost(results: Sequence[dict[str, Any]], wall_s: float,
               run_stats: dict[str, int] | None = None) -> dict[str, Any]:
    """What the audit itself cost: wall time, guard time by guard (summed over artifacts: with --jobs it can
    exceed the wall time), and how the run was spread (jobs, worker processes, batches, runtime start-ups)."""
    by_guard: dict[str, dict[str, Any]] = {}
    for result in results:
        if result["status"] == SKIP and (result.get("skip") or {}).get("reason") == NOT_APPLICABLE:
            continue
        row = by_guard.setdefault(result["guard"], {"total_s": 0.0, "count": 0})
        row["total_s"] += float(result.get("duration_s") or 0.0)
        row["count"] += 1
    for row in by_guard.values():
        row["total_s"] = round(row["total_s"], 6)
    stats = run_stats or {}
    return {
        "wall_s": round(wall_s, 6),
        "by_guard": by_guard,
        "runtime_startups": int(stats.get("runtime_startups", 0)),
        "runtime_restarts": int(stats.get("runtime_restarts", 0)),
        "jobs": int(stats.get("jobs", 1)),
        "workers": int(stats.get("workers", 0)),
        "batches": int(stats.get("batches", 0)),
    }


def selected_guards(requested: Sequence[str] | None) -> list[str]:
    known = guard_ids()
    if not requested:
        return known
    unknown = [g for g in requested if g not in known]
    if unknown:
        import difflib

        near = [m for g in unknown for m in difflib.get_close_matches(g, known, n=1)]
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise UsageError(f"unknown guard(s): {', '.join(unknown)}; {hint}known guards: {', '.join(known)}")
    return [g for g in known if g in requested]
