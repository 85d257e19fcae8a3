"""Artifacts behind `http://` and `https://` URLs, read with HTTP Range requests, never downloaded whole.

A `RemoteFile` stands in for a memory-mapped file: the readers' bounded reads (`View.check`) fetch the
64 KiB blocks they touch into a sparse temporary file that is mapped once, so every reader keeps its
`struct.unpack_from` over a real buffer. Readers that walk bytes without `View.check` (the GGUF header
loop, the flatbuffer walk of a PTE program, the protobuf walk of an ONNX graph) are covered by
`formats.wire.binary.prefetch`, which fetches the region each format's structure says they read. This module
knows HTTP, not formats: it imports no reader.

Requests: `HEAD` for the size and ETag, then Range GETs; redirects are followed (at most 10) and
credentials are sent only to the host they were given for, never to a redirect target on another host;
each request has a timeout and is retried a bounded number of times on connection errors, 429 and 5xx.
A server that answers a Range request with the whole body (200) is an error: quantgate never falls back
to a full download. Credentials come from the environment (`HF_TOKEN` for the Hub, or
`QUANTGATE_HTTP_HEADERS`) and are never printed: every URL shown is stripped of user info and query.

`s3://` and `gs://` objects (`FsspecFile`, through fsspec's backends) fill the same blocks with ranged
GETs pinned to the version and ETag opened; `store_list` lists a bucket prefix, bounded. The files
beside any remote artifact are looked up with `join` (right per scheme) and `exists`.

Only the standard library for http(s); http.client and friends are imported when a URL is first opened.
"""

from __future__ import annotations

import os
import threading
from typing import Any

BLOCK = 64 << 10
MAX_AHEAD_BLOCKS = 64  # sequential reads grow the request up to 4 MiB
MAX_REDIRECTS = 10
RETRIES = 3
HF_HOSTS = ("huggingface.co", "hf.co")


class RemoteError(Exception):
    """A remote artifact cannot be read as asked (no Range support, HTTP error, network failure)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# object stores read through fsspec (its s3fs / gcsfs backend), by range like an http(s) URL
FSSPEC_SCHEMES = {"s3": "s3", "gs": "gcs"}  # scheme -> the quantgate extra that installs its backend
SCHEMES = ("http://", "https://", "s3://", "gs://")


def is_url(path: Any) -> bool:
    """A remote file read by range: an http(s) URL or an object in a store. The files beside it (a
    shard's index and shards, external data, a `.ptd`) are looked up beside it (`join`, `exists`)."""
    return isinstance(path, str) and path[:8].lower().startswith(SCHEMES)


def is_fsspec(path: Any) -> bool:
    return isinstance(path, str) and path[:5].lower().startswith(SCHEMES[2:])


def display_url(url: str) -> str:
    """The URL as shown anywhere: no user info, no query (a presigned URL's signature), no fragment."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


CHANGED = "{}: the file changed while it was read (its ETag no longer matches)"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def max_fetch_bytes() -> int:
    """The most bytes one remote file may cost (QUANTGATE_REMOTE_MAX_BYTES, default 512 MiB)."""
    return int(_env_float("QUANTGATE_REMOTE_MAX_BYTES", 512 << 20))


def _origin(url: str) -> tuple[str, str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _hf_host(host: str) -> bool:
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT", "")
    if endpoint and (urlsplit(endpoint).hostname or "").lower() == host:
        return True
    return any(host == h or host.endswith("." + h) for h in HF_HOSTS)


def auth_headers(url: str) -> dict[str, str]:
    """Headers the environment gives for the URL's host: `QUANTGATE_HTTP_HEADERS` (a JSON object, or one
    `Name: value` per line) for every URL given, `HF_TOKEN` as a bearer token for the Hub's hosts."""
    import json

    out: dict[str, str] = {}
    token = os.environ.get("HF_TOKEN", "").strip()
    if token and _hf_host(_origin(url)[1]):
        out["Authorization"] = f"Bearer {token}"
    raw = os.environ.get("QUANTGATE_HTTP_HEADERS", "").strip()
    if raw.startswith("{"):
        try:
            doc = json.loads(raw)
        except ValueError:
            raise RemoteError("QUANTGATE_HTTP_HEADERS is not a JSON object of header names to values") from None
        if not isinstance(doc, dict):
            raise RemoteError("QUANTGATE_HTTP_HEADERS is not a JSON object of header names to values")
        items = [(str(k), str(v)) for k, v in doc.items()]
    else:
        items = []
        for line in raw.splitlines():
            if line.strip():
                name, sep, value = line.partition(":")
                if not sep:
                    raise RemoteError("QUANTGATE_HTTP_HEADERS: each line must be `Name: value`")
                items.append((name.strip(), value.strip()))
    for name, value in items:
        if not name or any(c in name + value for c in "\r\n\x00"):
            raise RemoteError("QUANTGATE_HTTP_HEADERS holds a header name or value with a line break")
        out[name] = value
    return out


class _Response:
    def __init__(self, status: int, headers: Any, body: bytes, url: str):
        self.status = status
        self.headers = headers
        self.body = body
        self.url = url


def _request(
    method: str, url: str, headers: dict[str, str], secret: dict[str, str], *, want_body: bool = True,
    sink: Any = None, max_body: int = BLOCK,
) -> _Response:
    """One request with redirects followed; `secret` headers go only to the origin they were given for."""
    import http.client
    import time
    from urllib.parse import urljoin, urlsplit

    timeout = _env_float("QUANTGATE_HTTP_TIMEOUT", 30.0)
    origin = _origin(url)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        if parts.scheme.lower() not in ("http", "https"):
            raise RemoteError(f"{display_url(url)} redirects to a {parts.scheme or 'relative'} URL; not followed")
        send = dict(headers)
        if _origin(current) == origin:
            send.update(secret)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        last: Exception | None = None
        for attempt in range(RETRIES):
            if attempt:
                time.sleep(0.25 * (2**attempt))
            cls = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
            conn = cls(parts.hostname or "", parts.port, timeout=timeout)
            try:
                conn.request(method, target, headers=send)
                resp = conn.getresponse()
                status = resp.status
                if status in (301, 302, 303, 307, 308) or (status == 200 and not want_body):
                    body = b""
                elif status == 200 and method == "GET" and "Range" in send:
                    body = b""  # a full body where a range was asked: never read it
                elif status == 200 and sink is not None:
                    sink(resp)  # streamed (and restarted from scratch on a retry)
                    body = b""
                else:
                    # an error page is not read; a body is read up to what was asked (+1, so that an
                    # oversized answer is seen) and within a deadline (a server dripping bytes)
                    body = _read_body(resp, max_body + 1, timeout * 4) if status in (200, 206) and \
                        method != "HEAD" else b""
                if status == 429 or status >= 500:
                    last = RemoteError(f"{display_url(current)} answered HTTP {status}", status)
                    continue
                out = _Response(status, resp.headers, body, current)
                break
            except (OSError, http.client.HTTPException) as exc:
                kind = "truncated response" if isinstance(exc, http.client.IncompleteRead) else type(exc).__name__
                last = RemoteError(f"{display_url(current)}: {kind}: {_short(exc)}")
            finally:
                conn.close()
        else:
            assert last is not None
            raise RemoteError(f"{last} (after {RETRIES} attempts)", getattr(last, "status", None))
        if out.status in (301, 302, 303, 307, 308):
            location = out.headers.get("Location")
            if not location:
                raise RemoteError(f"{display_url(current)} redirects with no Location")
            current = urljoin(current, location)
            continue
        return out
    raise RemoteError(f"{display_url(url)}: more than {MAX_REDIRECTS} redirects")


def _read_body(resp: Any, limit: int, seconds: float) -> bytes:
    import time

    deadline = time.monotonic() + seconds
    chunks, got = [], 0
    while got < limit:
        chunk = resp.read(min(1 << 20, limit - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the body took more than {seconds:.0f} s")
    if got < limit and resp.length:  # the connection closed before Content-Length: retried
        import http.client

        raise http.client.IncompleteRead(b"".join(chunks), resp.length)
    return b"".join(chunks)


def _check_length(shown: str, got: int, asked: int) -> None:
    if got < asked:
        raise RemoteError(f"{shown}: truncated response ({got} of {asked} bytes)")
    if got > asked:
        raise RemoteError(f"{shown}: the server sent more than the {asked} bytes asked; not used")


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def sha256_url(url: str, label: str) -> str:
    """The file's sha256 in one streamed read (the only full read quantgate makes of a remote file, and
    only when asked), with a progress bar on stderr; a short body is an error, never a digest."""
    import hashlib

    from quantgate.core.progress import Progress

    rf = open_file(url)
    hashed: dict[str, Any] = {}
    progress = Progress(f"sha256 {label}", rf.size, "B")

    def hash_chunks(chunks: Any) -> None:  # from scratch each call: an HTTP retry streams again
        digest, got = hashlib.sha256(), 0
        for chunk in chunks:
            digest.update(chunk)
            got += len(chunk)
            progress.update(len(chunk))
        hashed.update(digest=digest.hexdigest(), got=got)

    try:
        if isinstance(rf, FsspecFile):
            rf.stream(hash_chunks)
            status = 200
        else:
            rf.requests += 1
            sink = lambda resp: hash_chunks(iter(lambda: resp.read(1 << 20), b""))  # noqa: E731
            status = _request("GET", url, {"User-Agent": "quantgate", **rf.pinned()}, rf.secret, sink=sink).status
    finally:
        progress.close()
    got = hashed.get("got", 0)
    rf.bytes_fetched += got
    if status == 412:  # the digest would be another file's than the one the guards read
        raise RemoteError(CHANGED.format(rf.shown), 412)
    if status != 200 or "digest" not in hashed:
        raise RemoteError(f"{rf.shown}: streaming it for sha256 answered HTTP {status}", status)
    if got != rf.size:
        raise RemoteError(f"{rf.shown}: truncated: {got:,} of {rf.size:,} bytes while hashing")
    return str(hashed["digest"])


class RemoteFile:
    """One remote file: size and ETag from HEAD, bytes by Range into a sparse mapped temporary file."""

    def __init__(self, url: str):
        import re

        self._start(url, auth_headers(url))
        head = self._call("HEAD", {}, want_body=False)
        if head.status == 404 or head.status == 410:
            raise RemoteError(f"{self.shown}: not found (HTTP {head.status})", head.status)
        declared: int | None = None
        self.etag: str | None = None
        # the revision read: a Hub `resolve/<commit>/` URL names it (hf:// listings resolve by commit)
        pinned = re.search(r"/resolve/([0-9a-f]{40})/", self.url.split("?", 1)[0])
        self.version: str | None = pinned.group(1) if pinned else None
        if head.status == 200:
            length = head.headers.get("Content-Length")
            declared = int(length) if length and length.isdigit() else None
            self.etag = head.headers.get("ETag")
            self.version = self.version or head.headers.get("X-Repo-Commit")  # the Hub names its commit
        elif head.status in (401, 403):
            hint = "" if self.secret else " (set HF_TOKEN or QUANTGATE_HTTP_HEADERS for a private artifact)"
            # a presigned URL may be signed for GET only: the Range probe below decides
            if head.status == 401:
                raise RemoteError(f"{self.shown}: HTTP {head.status}, not authorised{hint}", head.status)
        elif head.status not in (405, 501):
            raise RemoteError(f"{self.shown}: HEAD answered HTTP {head.status}", head.status)
        # the probe: a one-block Range GET gives the total size, proves Range support, and is the head
        block = self.block
        probe = self._call("GET", {"Range": f"bytes=0-{block - 1}"}, max_body=block)
        if probe.status == 200:
            raise RemoteError(
                f"{self.shown}: the server ignores HTTP Range requests (answered 200 with the whole file); "
                "quantgate reads remote artifacts by range only: download it and gate the local file"
            )
        if probe.status == 416 and declared == 0:
            total, first = 0, b""
        elif probe.status != 206:
            raise RemoteError(f"{self.shown}: a Range request answered HTTP {probe.status}", probe.status)
        else:
            match = re.fullmatch(r"bytes\s+(\d+)-(\d+)/(\d+)", (probe.headers.get("Content-Range") or "").strip())
            if match is None or int(match.group(1)) != 0:
                raise RemoteError(f"{self.shown}: a Range response has no usable Content-Range")
            total, first = int(match.group(3)), probe.body
            _check_length(self.shown, len(first), min(block, total))
            self.etag = self.etag or probe.headers.get("ETag")
        if declared is not None and declared != total:
            raise RemoteError(
                f"{self.shown}: HEAD declares {declared:,} bytes but a Range response says {total:,}: "
                "the file changed or the server is inconsistent"
            )
        self._map(total, first)

    def _start(self, url: str, secret: dict[str, str]) -> None:
        """The fields every remote file has, before its size is known."""
        self.url = url
        self.shown = display_url(url)
        self.secret = secret
        self.bytes_fetched = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._have: set[int] = set()
        self._target: tuple[str, dict[str, str]] | None = None  # (redirect target, its credentials)
        # QUANTGATE_REMOTE_BLOCK: smaller blocks make the tests read small fixtures in many pieces
        self.block = max(512, int(_env_float("QUANTGATE_REMOTE_BLOCK", BLOCK)))
        self._last_end = -1
        self._ahead = 1

    def _map(self, total: int, first: bytes) -> None:
        """The sparse temporary file of `total` bytes, mapped, with the first block stored."""
        import mmap
        import tempfile

        self.size = total
        # open for the life of the process (the map below needs it); deleted by the OS on close
        self._file = tempfile.TemporaryFile(prefix="quantgate-remote-")  # noqa: SIM115
        self.buf: Any = b""
        if total:
            try:
                self._file.truncate(total)  # sparse: only fetched blocks take space
                self.buf = mmap.mmap(self._file.fileno(), total)
            except (OSError, OverflowError, ValueError) as exc:
                self._file.close()
                raise RemoteError(f"{self.shown}: the server says it holds {total:,} bytes, more than can be "
                                  f"mapped here ({_short(exc)})") from None
            self._store(0, first)

    def _call(self, method: str, headers: dict[str, str], *, want_body: bool = True, max_body: int = BLOCK
              ) -> _Response:
        self.requests += 1
        all_headers = {"User-Agent": "quantgate", **headers}
        if self._target is not None:
            # the Range GETs after the probe go straight to where the URL redirected (a Hub `resolve/`
            # URL -> its CDN), with the credentials only when that is still the URL's own origin
            resp = _request(method, self._target[0], all_headers, self._target[1], want_body=want_body,
                            max_body=max_body)
            if resp.status not in (401, 403, 404, 410):
                self.bytes_fetched += len(resp.body)
                return resp
            self._target = None  # expired (a presigned target): through the URL again
            self.requests += 1
        resp = _request(method, self.url, all_headers, self.secret, want_body=want_body, max_body=max_body)
        self.bytes_fetched += len(resp.body)
        if method == "GET" and resp.status == 206 and resp.url != self.url:
            self._target = (resp.url, self.secret if _origin(resp.url) == _origin(self.url) else {})
        return resp

    def _store(self, start: int, data: bytes) -> None:
        self.buf[start : start + len(data)] = data
        first, last = start // self.block, (start + len(data) - 1) // self.block
        end = start + len(data)
        for b in range(first, last + 1):
            if (b + 1) * self.block <= end or end == self.size:
                self._have.add(b)

    def ensure(self, pos: int, size: int) -> None:
        """Fetch the blocks under [pos, pos + size) not fetched yet (clamped to the file)."""
        if size <= 0 or pos >= self.size or pos < 0:
            return
        first, last = pos // self.block, (min(pos + size, self.size) - 1) // self.block
        if all(b in self._have for b in range(first, last + 1)):
            return
        with self._lock:
            b = first
            while b <= last:
                if b in self._have:
                    b += 1
                    continue
                run_end = b
                while run_end + 1 <= last and run_end + 1 not in self._have:
                    run_end += 1
                # sequential reading (this run starts where the previous one ended) reads ahead
                if b * self.block == self._last_end:
                    self._ahead = min(self._ahead * 2, MAX_AHEAD_BLOCKS)
                else:
                    self._ahead = 1
                limit = (self.size - 1) // self.block
                ahead_end = run_end
                while ahead_end < min(b + self._ahead - 1, limit) and ahead_end + 1 not in self._have:
                    ahead_end += 1
                self._fetch(b * self.block, min((ahead_end + 1) * self.block, self.size))
                b = ahead_end + 1

    def _fetch(self, start: int, end: int) -> None:
        import re

        if self.bytes_fetched + (end - start) > max_fetch_bytes():
            raise RemoteError(
                f"{self.shown}: reading it would fetch more than {max_fetch_bytes():,} bytes "
                "(QUANTGATE_REMOTE_MAX_BYTES); download it and gate the local file"
            )
        resp = self._call("GET", {"Range": f"bytes={start}-{end - 1}", **self.pinned()}, max_body=end - start)
        if resp.status == 412:
            raise RemoteError(CHANGED.format(self.shown), 412)
        if resp.status == 200:
            raise RemoteError(f"{self.shown}: the server stopped honouring Range requests (answered 200)")
        if resp.status != 206:
            raise RemoteError(f"{self.shown}: a Range request answered HTTP {resp.status}", resp.status)
        match = re.fullmatch(r"bytes\s+(\d+)-(\d+)/(\d+)", (resp.headers.get("Content-Range") or "").strip())
        if match is None or int(match.group(1)) != start or int(match.group(3)) != self.size:
            raise RemoteError(f"{self.shown}: a Range response does not match the range asked or the file size")
        _check_length(self.shown, len(resp.body), end - start)
        self._store(start, resp.body)
        self._last_end = end

    def pinned(self) -> dict[str, str]:
        """The condition every read after the first carries: a file replaced mid-read fails (412), never
        mixes two versions."""
        return {"If-Match": self.etag} if self.etag else {}

    def read(self, pos: int, size: int) -> bytes:
        self.ensure(pos, size)
        return bytes(self.buf[pos : pos + size])

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.shown, "size": self.size, "bytes_fetched": self.bytes_fetched,
                               "requests": self.requests}
        if self.etag:
            out["etag"] = self.etag
        if self.version:
            out["revision"] = self.version
        return out


class FsspecFile(RemoteFile):
    """An `s3://` or `gs://` object through fsspec: size, ETag and revision from the store's metadata,
    bytes by ranged GETs into the same sparse mapped file, so every reader and `prefetch` work
    unchanged. Each read is pinned to what was opened, as `If-Match` pins an http(s) file: the S3
    VersionId (versioned bucket) and `If-Match` on the ETag, the GCS generation; an object replaced
    mid-read is an error, never a mix of two versions. Credentials and endpoint are the backend's own
    (AWS_* / GOOGLE_* environment, config files, instance roles); never printed."""

    def __init__(self, url: str):
        self._start(url, {})  # the backend's own credentials, never ours
        self.scheme = url.split(":", 1)[0].lower()
        self._fs, self._pid = _fsspec_filesystem(self.scheme, self.shown), os.getpid()
        self.path = url.split("://", 1)[1]
        info = self._store_call(lambda: self.fs.info(self.path))
        if info.get("type") not in (None, "file"):
            raise RemoteError(f"{self.shown}: not a file (a prefix or bucket); name one object, or gate the "
                              "prefix with `quantgate run`", 404)
        try:
            total = int(info["size"])
        except (KeyError, TypeError, ValueError):
            raise RemoteError(f"{self.shown}: the store gives no size for it") from None
        etag = info.get("ETag") or info.get("etag")
        self.etag = str(etag) if etag else None
        # the object's revision where the store keeps one (an S3 VersionId, a GCS generation)
        version = info.get("VersionId") or info.get("generation")
        self.version = str(version) if version and version != "null" else None
        self._pin = self.version  # the revision every read asks for
        self._map(total, b"")
        if total:
            try:
                self._fetch(0, min(self.block, total))
            except RemoteError as exc:
                if exc.status != 403 or self._pin is None or self.scheme != "s3":
                    raise
                # reading a version needs s3:GetObjectVersion; without it If-Match alone guards the reads
                self._pin = None
                self._fetch(0, min(self.block, total))

    @property
    def fs(self) -> Any:
        """The backend's filesystem, made again in a forked worker (`--jobs`): fsspec's async
        filesystems refuse to run in a child of the process that made them."""
        if self._pid != os.getpid():
            self._fs, self._pid = _fsspec_filesystem(self.scheme, self.shown), os.getpid()
        return self._fs

    def _store_call(self, call: Any, reading: bool = False) -> Any:
        self.requests += 1
        try:
            return call()
        except FileNotFoundError:
            if reading:  # it was there when opened: replaced or deleted since (its version is gone)
                raise RemoteError(f"{self.shown}: the file changed while it was read (the version opened is "
                                  "gone)", 404) from None
            raise RemoteError(f"{self.shown}: not found", 404) from None
        except PermissionError as exc:
            raise RemoteError(f"{self.shown}: access denied ({_short(exc)}); check the store's credentials",
                              403) from None
        except RemoteError:
            raise
        except Exception as exc:  # a backend's own error types (botocore, aiohttp, google-auth)
            if reading and _precondition_failed(exc):
                raise RemoteError(CHANGED.format(self.shown), 412) from None
            raise RemoteError(f"{self.shown}: {type(exc).__name__}: {_short(exc)}") from None

    def _fetch(self, start: int, end: int) -> None:
        if self.bytes_fetched + (end - start) > max_fetch_bytes():
            raise RemoteError(
                f"{self.shown}: reading it would fetch more than {max_fetch_bytes():,} bytes "
                "(QUANTGATE_REMOTE_MAX_BYTES); download it and gate the local file"
            )
        data = self._read(start, end)
        self.bytes_fetched += len(data)
        _check_length(self.shown, len(data), end - start)  # a short read is truncation, never padding
        self._store(start, data)
        self._last_end = end

    def _read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the revision opened, a replaced or vanished one being the one error."""
        return self._store_call(lambda: self._range(start, end), reading=True)

    def _range(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the revision opened: one ranged GET."""
        if self.scheme == "s3":
            return _s3_range(self.fs, self.path, start, end, self.etag, self._pin)
        pin = {"generation": self._pin} if self._pin else {}  # gcsfs asks for that generation
        return bytes(self.fs.cat_file(self.path, start=start, end=end, **pin))

    def stream(self, consume: Any) -> None:
        """The whole object, read once: `consume` gets an iterator of 1 MiB chunks (for --sha256), each a
        ranged read pinned like every other, so the digest is of the revision the guards read."""

        consume(self._read(start, min(start + (1 << 20), self.size)) for start in range(0, self.size, 1 << 20))


def _s3_range(fs: Any, path: str, start: int, end: int, etag: str | None, version: str | None) -> bytes:
    """One S3 GetObject of bytes [start, end) with `If-Match` on the ETag and the VersionId opened
    (s3fs's `cat_file` passes neither without a version-aware filesystem, whose listings need
    ListBucketVersions); the body is read up to one byte past the range, so an oversized answer is seen
    and never read whole."""
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)
    extra = {"IfMatch": etag} if etag else {}
    if version:
        extra["VersionId"] = version

    async def get() -> bytes:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **extra)
        body, chunks, got = resp["Body"], [], 0
        try:
            while got <= end - start:  # a read returns what has arrived: read until the end or one too many
                chunk = await body.read(end - start + 1 - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        finally:
            body.close()
        return b"".join(chunks)

    return bytes(sync(fs.loop, get))


def _precondition_failed(exc: BaseException) -> bool:
    """The store refused a conditional read (HTTP 412): botocore's error under s3fs's OSError, or
    gcsfs's HttpError."""
    for each in (exc, exc.__cause__, exc.__context__):
        response = getattr(each, "response", None)
        if isinstance(response, dict):
            if response.get("Error", {}).get("Code") == "PreconditionFailed":
                return True
            if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
                return True
        if getattr(each, "code", None) == 412:
            return True
    return False


def _fsspec_filesystem(scheme: str, shown: str) -> Any:
    """fsspec's filesystem for `scheme`; a missing fsspec or backend is an error naming the extra."""
    extra = FSSPEC_SCHEMES[scheme]
    package = {"s3": "s3fs", "gcs": "gcsfs"}[extra]
    try:
        import fsspec

        if scheme == "gs":
            import logging

            # gcsfs logs a warning on every call it cannot classify a bucket for (an emulator, no
            # default credentials): noise on stderr, never a reason to stop
            logging.getLogger("gcsfs").setLevel(logging.ERROR)
        return fsspec.filesystem("s3" if scheme == "s3" else "gcs")
    except ImportError:
        raise RemoteError(
            f"{shown}: reading {scheme}:// needs the {package} package: pip install 'quantgate[{extra}]'"
        ) from None
    except Exception as exc:  # a backend that cannot start (bad configuration)
        raise RemoteError(f"{shown}: the {package} backend cannot start: {_short(exc)}") from None


STORE_MAX_OBJECTS = 10_000  # objects listed under one s3:// or gs:// prefix, as HF_MAX_FILES bounds a Hub repo


def store_list(url: str) -> tuple[str, list[str]]:
    """(the prefix as a URL ending in `/`, the key of every object below it, relative to it) for
    `s3://bucket/prefix` or `gs://bucket/prefix` (a trailing `/` or not; no key: the whole bucket).
    The keys are the store's, hostile: the caller decides what they may name. At most
    STORE_MAX_OBJECTS objects are listed (pages stop there); more is an error."""
    from fsspec.asyn import sync

    scheme = url.split(":", 1)[0].lower()
    shown = display_url(url)
    fs = _fsspec_filesystem(scheme, shown)
    bucket, _, key = url.split("://", 1)[1].partition("/")
    key = key.strip("/")
    if not bucket:
        raise RemoteError(f"{shown}: names no bucket")
    path = f"{bucket}/{key}" if key else bucket  # no trailing `/`: s3fs would add a second one
    limit = STORE_MAX_OBJECTS
    try:
        if scheme == "s3":
            items = sync(fs.loop, fs._lsdir, path, delimiter="", max_items=limit + 1)
        else:
            items, _ = sync(fs.loop, fs._do_list_objects, path, max_results=limit + 1, delimiter="")
    except FileNotFoundError:
        raise RemoteError(f"{shown}: no such bucket", 404) from None
    except PermissionError as exc:
        raise RemoteError(f"{shown}: listing it is denied ({_short(exc)}); check the store's credentials, "
                          "or name each object", 403) from None
    except Exception as exc:  # a backend's own error types
        raise RemoteError(f"{shown}: listing it failed: {type(exc).__name__}: {_short(exc)}") from None
    if len(items) > limit:
        raise RemoteError(f"{shown}: more than {limit:,} objects under the prefix (quantgate lists at most "
                          f"{limit:,}); name a narrower prefix")
    below = path + "/" if key else bucket + "/"
    names = []
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and item.get("type", "file") == "file" and name.startswith(below):
            names.append(name[len(below):])
    return f"{scheme}://{below}", sorted(names)


_OPEN: dict[str, RemoteFile] = {}
_MISSING: set[str] = set()


def open_file(url: str) -> RemoteFile:
    """The process's one RemoteFile for `url` (opened on first use; siblings and shards reuse theirs)."""
    rf = _OPEN.get(url)
    if rf is None:
        rf = _OPEN[url] = FsspecFile(url) if is_fsspec(url) else RemoteFile(url)
    return rf


def exists(url: str) -> bool:
    """The URL names a readable file (a 404/410 is False; other failures raise RemoteError)."""
    if url in _OPEN:
        return True
    if url in _MISSING:
        return False
    try:
        open_file(url)
    except RemoteError as exc:
        if exc.status in (404, 410):
            _MISSING.add(url)
            return False
        raise
    return True


def provenance(url: str) -> dict[str, Any] | None:
    rf = _OPEN.get(url)
    return rf.provenance() if rf is not None else None


def join(base_url: str, name: str) -> str:
    """`name` (a plain relative path, already checked) beside the file at `base_url`: URL-quoted in an
    http(s) URL, verbatim in an object key (`s3://`, `gs://` keys are not URL-encoded). Never above
    the file's folder: a `..` is refused here too, whatever the caller checked."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts or "\x00" in name or not parts:
        raise RemoteError(f"{name!r} is not a plain relative path beside {display_url(base_url)}; not read")
    if is_fsspec(base_url):
        return base_url.rsplit("/", 1)[0] + "/" + "/".join(parts)
    from urllib.parse import quote

    folder = base_url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[0]
    return folder + "/" + "/".join(quote(p) for p in parts)


def basename(url: str) -> str:
    """The file name at the end of `url` (unquoted in an http(s) URL; an object key's name as it is)."""
    from urllib.parse import unquote

    if is_fsspec(url):
        return url.rsplit("/", 1)[-1]
    return unquote(url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1])


# --- hf://org/model[@rev] ----------------------------------------------------------------------

HF_LIST_LIMIT = 16 << 20  # the Hub's model info JSON: a few KB, even for a repo of thousands of files
HF_MAX_FILES = 10_000


def is_hf(path: Any) -> bool:
    return isinstance(path, str) and path.startswith("hf://")


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hf_list(spec: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(resolve URL, display name) of every file of the Hub repo `hf://org/model[@rev]` whose name ends
    in one of `extensions`, at the commit the revision names (listed through the Hub API, resolved by
    commit so every file is read from one revision)."""
    import json
    import re
    from urllib.parse import quote

    body = spec[len("hf://"):]
    repo, _, rev = body.partition("@")
    rev = rev or "main"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?", repo) or not rev:
        raise RemoteError(f"{spec!r} is not hf://org/model[@revision]")
    endpoint = hf_endpoint()
    api = f"{endpoint}/api/models/{repo}/revision/{quote(rev, safe='')}"
    resp = _request("GET", api, {"User-Agent": "quantgate", "Accept": "application/json"}, auth_headers(api),
                    max_body=HF_LIST_LIMIT)
    if resp.status in (401, 403, 404):
        hint = "" if os.environ.get("HF_TOKEN") else " (a private or gated repo needs HF_TOKEN)"
        raise RemoteError(f"hf://{repo}@{rev}: the Hub answered HTTP {resp.status}{hint}", resp.status)
    if resp.status != 200:
        raise RemoteError(f"hf://{repo}@{rev}: the Hub answered HTTP {resp.status}", resp.status)
    if len(resp.body) > HF_LIST_LIMIT:
        raise RemoteError(f"hf://{repo}@{rev}: the Hub's file list is larger than {HF_LIST_LIMIT:,} bytes")
    try:
        doc = json.loads(resp.body)
    except ValueError:
        raise RemoteError(f"hf://{repo}@{rev}: the Hub's answer is not JSON") from None
    siblings = doc.get("siblings") if isinstance(doc, dict) else None
    if not isinstance(siblings, list):
        raise RemoteError(f"hf://{repo}@{rev}: the Hub's answer lists no files")
    sha = doc.get("sha")
    commit = sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{40}", sha) else rev
    out = []
    for item in siblings[:HF_MAX_FILES]:
        name = item.get("rfilename") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name.lower().endswith(extensions):
            continue
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\x00" in name or "\\" in name:
            continue  # never a path the Hub would serve; not followed
        url = f"{endpoint}/{repo}/resolve/{quote(commit, safe='')}/" + "/".join(quote(p) for p in parts)
        out.append((url, f"hf://{repo}@{commit}/{name}"))
    return sorted(out, key=lambda u: u[1])
