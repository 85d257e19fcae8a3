"""Remote artifacts over HTTP Range (quantgate.core.remote), against servers started here on 127.0.0.1.

Each server serves a folder: HEAD with Content-Length and ETag, GET with a single `bytes=a-b` range
(206), counting the bytes it sends. Variants: one that ignores Range (200 with the whole file), one
that redirects to another host (127.0.0.2 / localhost), one that requires an Authorization header,
one whose HEAD declares a size the file does not have, one that cuts its bodies short.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quantgate.core import jsonschemas

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
SRC = ROOT / "src"
TOKEN = "hf_secret_token_do_not_log_123"


class Served:
    def __init__(self, root: Path, mode: str = "range", redirect_to: str | None = None):
        self.root, self.mode, self.redirect_to = root, mode, redirect_to
        self.bytes_sent = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.server: http.server.ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def _handler(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _file(self) -> Path | None:
            rel = self.path.split("?", 1)[0].lstrip("/")
            from urllib.parse import unquote

            path = (served.root / unquote(rel)).resolve()
            if served.root.resolve() not in path.parents or not path.is_file():
                return None
            return path

        def _common(self, method: str) -> tuple[Path, int] | None:
            served.requests.append((method, self.path, {k: v for k, v in self.headers.items()}))
            if served.mode == "redirect":
                self.send_response(302)
                self.send_header("Location", served.redirect_to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if served.mode == "auth" and self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            path = self._file()
            if path is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return path, path.stat().st_size

        def _etag(self, path: Path) -> str:
            st = path.stat()
            return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'

        def do_HEAD(self) -> None:
            got = self._common("HEAD")
            if got is None:
                return
            path, size = got
            self.send_response(200)
            declared = {"liar": size + 1, "huge": 1 << 62}.get(served.mode, size)
            self.send_header("Content-Length", str(declared))
            self.send_header("ETag", self._etag(path))
            if served.mode != "norange":
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:
            got = self._common("GET")
            if got is None:
                return
            path, size = got
            wanted = self.headers.get("If-Match")
            if wanted is not None and wanted != self._etag(path):  # RFC 9110: the file is another now
                self.send_response(412)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
            with open(path, "rb") as handle:
                if match is None or served.mode == "norange":
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    data = handle.read()
                    if served.mode == "shortfull":  # a whole-file GET (--sha256) cut in the middle
                        data = data[: len(data) // 2]
                        self.close_connection = True
                else:
                    start, end = int(match.group(1)), min(int(match.group(2)), size - 1)
                    handle.seek(start)
                    data = handle.read(end - start + 1)
                    self.send_response(206)
                    total = 1 << 62 if served.mode == "huge" else size
                    self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
                    self.send_header("Content-Length", str(len(data) + (4096 if served.mode == "oversized" else 0)))
                    self.send_header("ETag", self._etag(path))
                    self.end_headers()
                    if served.mode == "oversized":
                        data += b"\0" * 4096  # more than the range asked, announced as such
                    if served.mode == "truncated":
                        data = data[: len(data) // 2]
                        self.close_connection = True
            try:
                self.wfile.write(data)
                served.bytes_sent += len(data)
            except OSError:
                pass

    return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Served] = []

    def start(root: Path, mode: str = "range", host: str = "127.0.0.1", redirect_to: str | None = None) -> Served:
        served = Served(root, mode, redirect_to)
        served.server = http.server.ThreadingHTTPServer((host, 0), _handler(served))
        threading.Thread(target=served.server.serve_forever, daemon=True).start()
        started.append(served)
        return served

    yield start
    for s in started:
        assert s.server is not None
        s.server.shutdown()
        s.server.server_close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "QUANTGATE_HTTP_HEADERS", "HF_ENDPOINT")}
    env["PYTHONPATH"] = str(SRC)
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env.update(extra)
    return env


def qg(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quantgate", *args], capture_output=True, text=True,
                          env=_env(**env), timeout=120)


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A guard result without what differs by where the file was read from (path, time)."""
    out = dict(result)
    out.pop("duration_s", None)
    art = dict(out["artifact"])
    art.pop("path")
    art.pop("remote", None)
    out["artifact"] = art
    return json.loads(json.dumps(out).replace(str(FIX), "<fix>"))


def _guard(guard: str, target: str, **env: str) -> tuple[int, dict[str, Any], str]:
    proc = qg("guard", guard, target, **env)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


CASES = [
    ("gguf/model_q4_0.gguf", ("integrity", "gguf-dtypes")),
    ("gguf/model_mixed.gguf", ("integrity", "gguf-dtypes", "size-heuristic")),
    ("safetensors/sharded/model-00001-of-00004.safetensors", ("integrity", "safetensors-dtypes")),
    ("safetensors/sharded/model-00003-of-00004.safetensors", ("integrity", "safetensors-dtypes")),
    ("onnx/external/model.onnx", ("integrity", "onnx-dtypes", "size-heuristic")),
    ("pte/int8_xnnpack.pte", ("integrity", "pte-program")),
    ("pte/8da4w_emb4_xnnpack.pte", ("integrity", "pte-program")),
    ("pte/ext/fp32_portable_extconst.pte", ("integrity", "pte-program")),  # weights in a .ptd beside it
]


@pytest.mark.parametrize(("rel", "guards"), CASES, ids=[c[0] for c in CASES])
def test_remote_result_equals_local(serve: Any, rel: str, guards: tuple[str, ...]) -> None:
    served = serve(FIX)
    for guard in guards:
        code_local, local, _ = _guard(guard, str(FIX / rel))
        code_remote, remote, err = _guard(guard, f"{served.base}/{rel}")
        assert code_remote == code_local, err
        assert _comparable(remote) == _comparable(local)
        assert remote["artifact"]["path"] == f"{served.base}/{rel}"
        prov = remote["artifact"]["remote"]
        assert prov["url"] == f"{served.base}/{rel}"
        assert prov["size"] == (FIX / rel).stat().st_size
        assert prov["etag"].startswith('"')
        assert 0 < prov["bytes_fetched"] <= prov["size"]
        assert jsonschemas.validate(remote, "guard-result") == []


@pytest.mark.parametrize(("rel", "guards"), CASES, ids=[c[0] for c in CASES])
def test_remote_result_equals_local_in_small_blocks(serve: Any, rel: str, guards: tuple[str, ...]) -> None:
    """512-byte blocks: the fixtures are read in many pieces, so a region a reader walks without
    fetching it first would read zeros and differ from the local result."""
    served = serve(FIX)
    size = (FIX / rel).stat().st_size
    for guard in guards:
        code_local, local, _ = _guard(guard, str(FIX / rel))
        code_remote, remote, err = _guard(guard, f"{served.base}/{rel}", QUANTGATE_REMOTE_BLOCK="512")
        assert (code_remote, _comparable(remote)) == (code_local, _comparable(local)), err
        if rel.endswith((".gguf", ".safetensors")):  # headers, then weights never touched
            assert remote["artifact"]["remote"]["bytes_fetched"] < size // 4


def _sparse_gguf(path: Path, n_tensors: int = 64, rows: int = 4096, cols: int = 4096) -> int:
    """A GGUF whose tensor infos describe ~1.1 GB of Q8_0 weights, the data left as a hole (sparse)."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kvs = [(s("general.architecture"), 8, s("llama")), (s("general.alignment"), 4, struct.pack("<I", 32))]
    head = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs))
    for key, vtype, value in kvs:
        head += key + struct.pack("<I", vtype) + value
    q8_bytes = rows * cols // 32 * 34
    offset = 0
    for i in range(n_tensors):
        head += s(f"blk.{i}.ffn_up.weight") + struct.pack("<I", 2) + struct.pack("<QQ", cols, rows)
        head += struct.pack("<IQ", 8, offset)  # 8 = Q8_0
        offset += (q8_bytes + 31) // 32 * 32
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(len(head) + offset)
    return len(head) + offset


def test_large_sparse_gguf_reads_a_small_fraction(serve: Any, tmp_path: Path) -> None:
    size = _sparse_gguf(tmp_path / "big.gguf")
    assert size > 1_000_000_000
    served = serve(tmp_path)
    code_local, local, _ = _guard("gguf-dtypes", str(tmp_path / "big.gguf"))
    code, remote, err = _guard("gguf-dtypes", f"{served.base}/big.gguf")
    assert (code, _comparable(remote)) == (code_local, _comparable(local)), err
    assert remote["metrics"]["coverage"]["params"]["quantized"] == 1.0
    assert remote["metrics"]["params_total"] == 64 * 4096 * 4096
    assert served.bytes_sent <= 256 << 10  # the header and one block past it: < 0.02% of the file
    assert remote["artifact"]["remote"]["bytes_fetched"] == served.bytes_sent


def _sparse_safetensors(path: Path, n: int = 40, shape: tuple[int, int] = (8192, 8192)) -> int:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i in range(n):
        nbytes = shape[0] * shape[1] * 2
        header[f"model.layers.{i}.mlp.up_proj.weight"] = {"dtype": "BF16", "shape": list(shape),
                                                          "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


def test_large_sparse_safetensors_reads_a_small_fraction(serve: Any, tmp_path: Path) -> None:
    size = _sparse_safetensors(tmp_path / "model.safetensors")
    assert size > 5_000_000_000
    served = serve(tmp_path)
    code_local, local, _ = _guard("integrity", str(tmp_path / "model.safetensors"))
    code, remote, err = _guard("integrity", f"{served.base}/model.safetensors")
    assert (code, _comparable(remote)) == (code_local, _comparable(local)), err
    assert code == 0
    assert served.bytes_sent <= 128 << 10


def test_inspect_over_http(serve: Any) -> None:
    served = serve(FIX)
    rel = "gguf/model_q4_0.gguf"
    local = qg("inspect", str(FIX / rel), "--format", "json")
    remote = qg("inspect", f"{served.base}/{rel}", "--format", "json")
    assert remote.returncode == local.returncode == 0, remote.stderr
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert b.pop("path") == f"{served.base}/{rel}"
    a.pop("path")
    assert a == b


def test_run_over_http(serve: Any) -> None:
    served = serve(FIX)
    url = f"{served.base}/safetensors/sharded/model-00002-of-00004.safetensors"
    proc = qg("run", url, "--guards", "integrity,safetensors-dtypes", "--format", "json")
    local = qg("run", str(FIX / "safetensors/sharded/model-00002-of-00004.safetensors"),
               "--guards", "integrity,safetensors-dtypes", "--format", "json")
    assert proc.returncode == local.returncode == 1, proc.stderr  # a plain float checkpoint: coverage fails
    report = json.loads(proc.stdout)
    assert report["verdict"] == "FAIL"
    assert report["inputs"]["paths"] == [url]
    assert [a["path"] for a in report["artifacts"]] == [url]
    assert [_comparable(r) for r in report["results"]] == [_comparable(r) for r in json.loads(local.stdout)["results"]]


def test_server_without_range_is_an_error(serve: Any) -> None:
    served = serve(FIX, mode="norange")
    proc = qg("guard", "integrity", f"{served.base}/gguf/model_q4_0.gguf")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "ignores HTTP Range requests" in proc.stderr
    assert proc.stderr.count("\n") == 1
    # the whole body was never read: the one 200 was answered with headers only and dropped
    assert served.bytes_sent <= (FIX / "gguf/model_q4_0.gguf").stat().st_size
    assert [m for m, _, _ in served.requests] == ["HEAD", "GET"]


def test_head_size_disagreeing_with_range_is_an_error(serve: Any) -> None:
    served = serve(FIX, mode="liar")
    proc = qg("guard", "integrity", f"{served.base}/gguf/model_q4_0.gguf")
    assert proc.returncode == 2
    assert "HEAD declares" in proc.stderr


def test_truncated_body_is_an_error_after_bounded_retries(serve: Any) -> None:
    served = serve(FIX, mode="truncated")
    proc = qg("guard", "integrity", f"{served.base}/gguf/model_q4_0.gguf")
    assert proc.returncode == 2
    assert "truncated response" in proc.stderr
    assert [m for m, _, _ in served.requests] == ["HEAD", "GET", "GET", "GET"]


def test_missing_url_is_an_error(serve: Any) -> None:
    served = serve(FIX)
    proc = qg("guard", "integrity", f"{served.base}/gguf/nope.gguf")
    assert proc.returncode == 2
    assert "not found (HTTP 404)" in proc.stderr


def test_hf_token_sent_to_the_hub_endpoint_and_never_printed(serve: Any) -> None:
    served = serve(FIX, mode="auth")
    url = f"{served.base}/gguf/model_q4_0.gguf"
    proc = qg("guard", "gguf-dtypes", url)
    assert proc.returncode == 2 and "HTTP 401" in proc.stderr  # no token: refused
    proc = qg("guard", "gguf-dtypes", url, HF_TOKEN=TOKEN, HF_ENDPOINT=served.base)
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert all(h.get("Authorization") == f"Bearer {TOKEN}" for _, _, h in served.requests[-2:])
    # without HF_ENDPOINT naming it, 127.0.0.1 is not the Hub: the token is not sent there
    proc = qg("guard", "gguf-dtypes", url, HF_TOKEN=TOKEN)
    assert proc.returncode == 2


def test_generic_headers_env(serve: Any) -> None:
    served = serve(FIX, mode="auth")
    url = f"{served.base}/gguf/model_q4_0.gguf"
    for raw in (json.dumps({"Authorization": f"Bearer {TOKEN}"}), f"Authorization: Bearer {TOKEN}"):
        proc = qg("run", url, "--guards", "integrity", "--format", "json", QUANTGATE_HTTP_HEADERS=raw)
        assert proc.returncode == 0, proc.stderr
        assert TOKEN not in proc.stdout + proc.stderr


def test_authorization_not_forwarded_to_another_host(serve: Any) -> None:
    target = serve(FIX)
    # another host name for the same loopback server: a different origin, as a CDN would be
    front = serve(FIX, mode="redirect", redirect_to=target.base.replace("127.0.0.1", "localhost"))
    url = f"{front.base}/gguf/model_q4_0.gguf"
    code_local, local, _ = _guard("gguf-dtypes", str(FIX / "gguf/model_q4_0.gguf"))
    code, remote, err = _guard("gguf-dtypes", url, QUANTGATE_HTTP_HEADERS=f"Authorization: Bearer {TOKEN}",
                               QUANTGATE_REMOTE_BLOCK="4096")
    assert (code, _comparable(remote)) == (code_local, _comparable(local)), err
    assert front.requests and all(h.get("Authorization") == f"Bearer {TOKEN}" for _, _, h in front.requests)
    assert target.requests and all("Authorization" not in h for _, _, h in target.requests)
    # HEAD and the probe go through the redirect; the later ranges go straight to its target
    assert [m for m, _, _ in front.requests] == ["HEAD", "GET"]
    assert len(target.requests) > 3
    assert TOKEN not in json.dumps(remote) + err


def test_presigned_query_never_shown(serve: Any) -> None:
    served = serve(FIX)
    url = f"{served.base}/gguf/model_q4_0.gguf?X-Amz-Signature=deadbeefsecret"
    code, remote, err = _guard("integrity", url)
    assert code == 0, err
    assert "deadbeefsecret" not in json.dumps(remote) + err
    assert remote["artifact"]["path"] == f"{served.base}/gguf/model_q4_0.gguf"
    assert served.requests[-1][1].endswith("?X-Amz-Signature=deadbeefsecret")


def test_runtime_guard_skips_remote(serve: Any) -> None:
    served = serve(FIX)
    code, result, _ = _guard("pte-inspector", f"{served.base}/pte/int8_xnnpack.pte")
    assert code == 0
    assert result["status"] == "SKIP"
    assert result["skip"]["reason"] == "no_input"
    assert "needs the file on disk" in result["skip"]["detail"]
    assert served.bytes_sent == 0 or served.bytes_sent <= 64 << 10  # only the sniffed head


def test_sharded_index_missing_shard_over_http(serve: Any, tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(FIX / "safetensors/sharded", folder)
    (folder / "model-00004-of-00004.safetensors").unlink()
    served = serve(tmp_path)
    _, local, _ = _guard("integrity", str(folder / "model-00001-of-00004.safetensors"))
    code, remote, err = _guard("integrity", f"{served.base}/sharded/model-00001-of-00004.safetensors")
    assert _comparable(remote) == _comparable(local), err
    assert "ST_INDEX_SHARD_MISSING" in {f["code"] for f in remote["findings"]}
    assert code == 1


def test_remote_file_module_block_cache(serve: Any, tmp_path: Path) -> None:
    from quantgate.core import remote

    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "blob.bin").write_bytes(data)
    served = serve(tmp_path)
    rf = remote.RemoteFile(f"{served.base}/blob.bin")
    assert rf.size == len(data)
    assert rf.read(100_000, 10) == data[100_000:100_010]
    assert rf.read(100_005, 10) == data[100_005:100_015]  # the same block: no new request
    assert rf.requests == 3  # HEAD, the probe, one block
    assert rf.bytes_fetched == 2 * remote.BLOCK
    assert hashlib.sha256(rf.read(0, len(data))).digest() == hashlib.sha256(data).digest()
    assert rf.bytes_fetched == len(data)


def test_sha256_streams_the_remote_file_once(serve: Any) -> None:
    served = serve(FIX)
    rel = "safetensors/sharded/model-00001-of-00004.safetensors"
    proc = qg("run", f"{served.base}/{rel}", "--guards", "integrity", "--sha256", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["artifacts"][0]["sha256"] == hashlib.sha256((FIX / rel).read_bytes()).hexdigest()
    full = [p for m, p, h in served.requests if m == "GET" and "Range" not in h]
    assert full == [f"/{rel}"]  # one streamed GET, the rest by range


def test_run_with_an_unreadable_url_is_error(serve: Any) -> None:
    served = serve(FIX, mode="norange")
    proc = qg("run", f"{served.base}/gguf/model_q4_0.gguf", "--guards", "integrity", "--format", "json")
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["verdict"] == "ERROR"
    assert report["results"][0]["findings"][0]["code"] == "FILE_UNREADABLE"
    assert "ignores HTTP Range requests" in report["results"][0]["findings"][0]["message"]


def test_hf_repo_gates_every_artifact_at_one_commit(serve: Any, tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    files = sorted(p.name for p in (FIX / "safetensors/sharded").iterdir())
    api = tmp_path / "api/models/org/model/revision"
    api.mkdir(parents=True)
    (api / "v1").write_text(json.dumps({"sha": sha, "siblings": [{"rfilename": n} for n in files]
                                        + [{"rfilename": "../escape.gguf"}, {"rfilename": "README.md"}]}))
    shutil.copytree(FIX / "safetensors/sharded", tmp_path / f"org/model/resolve/{sha}")
    served = serve(tmp_path, mode="auth")
    env = {"HF_ENDPOINT": served.base, "HF_TOKEN": TOKEN}
    proc = qg("run", "hf://org/model@v1", "--guards", "integrity", "--format", "json", **env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    shards = [n for n in files if n.endswith(".safetensors")]
    assert [a["path"] for a in report["artifacts"]] == [f"hf://org/model@{sha}/{n}" for n in shards]
    assert report["inputs"]["paths"] == ["hf://org/model@v1"]
    local = qg("run", str(FIX / "safetensors/sharded"), "--guards", "integrity", "--format", "json")
    assert [_comparable(r) for r in report["results"]] == [_comparable(r) for r in json.loads(local.stdout)["results"]]
    assert TOKEN not in proc.stdout + proc.stderr
    # listed at the revision, read at the commit it names
    assert served.requests[0][1] == "/api/models/org/model/revision/v1"
    assert all(f"/resolve/{sha}/" in p for _, p, _ in served.requests[1:])


def test_hf_repo_not_found_is_a_usage_error(serve: Any, tmp_path: Path) -> None:
    served = serve(tmp_path)
    proc = qg("run", "hf://org/nothing", "--guards", "integrity", HF_ENDPOINT=served.base)
    assert proc.returncode == 4
    assert "hf://org/nothing@main: the Hub answered HTTP 404" in proc.stderr


def test_oversized_range_body_is_an_error(serve: Any) -> None:
    served = serve(FIX, mode="oversized")
    proc = qg("guard", "integrity", f"{served.base}/gguf/model_q4_0.gguf")
    assert proc.returncode == 2
    assert "sent more than the" in proc.stderr


def test_absurd_size_is_an_error_not_a_crash(serve: Any) -> None:
    served = serve(FIX, mode="huge")  # HEAD and Content-Range agree on 4 EiB
    proc = qg("guard", "integrity", f"{served.base}/gguf/model_q4_0.gguf")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("quantgate: error: ")
    assert "Traceback" not in proc.stderr


def test_sha256_reports_progress_on_stderr_and_stdout_is_the_report(serve: Any, monkeypatch: Any) -> None:
    from quantgate.core import progress, remote

    served = serve(FIX)
    rel = "gguf/model_q4_0.gguf"
    seen: list[tuple[str, int, int]] = []

    class Recorder:
        def __init__(self, label: str, total: int, unit: str = ""):
            self.label, self.total, self.done = label, total, 0

        def update(self, n: int) -> None:
            self.done += n

        def close(self) -> None:
            seen.append((self.label, self.total, self.done))

    monkeypatch.setattr(progress, "Progress", Recorder)
    monkeypatch.setenv("NO_PROXY", "*")
    size = (FIX / rel).stat().st_size
    assert remote.sha256_url(f"{served.base}/{rel}", "m") == hashlib.sha256((FIX / rel).read_bytes()).hexdigest()
    assert seen == [("sha256 m", size, size)]  # one bar over the whole file, fed as it streamed
    # the CLI: the report alone on stdout (the bar and log lines go to stderr)
    proc = qg("run", f"{served.base}/{rel}", "--guards", "integrity", "--sha256", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["artifacts"][0]["sha256"] == hashlib.sha256((FIX / rel).read_bytes()).hexdigest()


def test_sha256_of_a_truncated_stream_is_no_digest(serve: Any) -> None:
    served = serve(FIX, mode="shortfull")
    rel = "gguf/model_q4_0.gguf"
    proc = qg("run", f"{served.base}/{rel}", "--guards", "integrity", "--sha256", "--format", "json")
    report = json.loads(proc.stdout)
    assert "sha256" not in report["artifacts"][0] or report["artifacts"][0]["sha256"] is None
    size = (FIX / rel).stat().st_size
    assert f"{served.base}/{rel}: truncated: {size // 2:,} of {size:,} bytes while hashing" in proc.stderr


def _rewrite(path: Path, data: bytes) -> None:
    """The file replaced on the server: new bytes and a new mtime, so a new ETag."""
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_a_file_replaced_mid_read_is_an_error(serve: Any, tmp_path: Path) -> None:
    from quantgate.core import remote

    data = bytes(range(256)) * 4096  # 1 MiB
    (tmp_path / "blob.bin").write_bytes(data)
    served = serve(tmp_path)
    rf = remote.RemoteFile(f"{served.base}/blob.bin")
    assert rf.read(100_000, 10) == data[100_000:100_010]
    _rewrite(tmp_path / "blob.bin", bytes(len(data)))
    with pytest.raises(remote.RemoteError) as caught:
        rf.read(900_000, 10)  # a block not fetched yet: asked for with If-Match on the ETag opened
    assert caught.value.status == 412 and str(caught.value) == (
        f"{served.base}/blob.bin: the file changed while it was read (its ETag no longer matches)")
    assert served.requests[-1][2]["If-Match"] == rf.etag


def test_sha256_of_a_file_replaced_after_its_reads_is_no_digest(serve: Any, tmp_path: Path) -> None:
    # the guards read one revision; the digest must be of that one, or none (on main: the new file's)
    from quantgate.core import remote

    data = bytes(range(256)) * 4096
    (tmp_path / "blob.bin").write_bytes(data)
    served = serve(tmp_path)
    url = f"{served.base}/blob.bin"
    assert remote.open_file(url).read(0, 16) == data[:16]
    _rewrite(tmp_path / "blob.bin", bytes(len(data)))
    with pytest.raises(remote.RemoteError) as caught:
        remote.sha256_url(url, "blob")
    assert str(caught.value) == f"{url}: the file changed while it was read (its ETag no longer matches)"
