"""`s3://` and `gs://` artifacts through fsspec (quantgate.core.remote.FsspecFile), read by range.

s3:// runs against moto's S3 server started here on 127.0.0.1 (the dev extra installs moto[server]
and s3fs), gs:// against gcp-storage-emulator (with gcsfs): the same results as the local file, a
small asserted byte count, the object's ETag and revision (S3 VersionId, GCS generation) in the
provenance, and --sha256 streamed once. A missing backend is an error naming the
extra to install, for s3:// and gs:// alike (the backends are hidden by a module that refuses to
import, so the test holds whether or not they are installed).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.test_remote import _comparable, _sparse_gguf

from quantgate.core import jsonschemas

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
SRC = ROOT / "src"
BUCKET = "models"
CASES = [
    ("release/tiny-llama-q8_0.gguf", ("integrity", "gguf-dtypes", "size-heuristic")),
    ("gguf/model_q4_0.gguf", ("integrity", "gguf-dtypes")),
    ("release/tiny-llama-w8a8.safetensors", ("integrity", "safetensors-dtypes")),
    ("pte/int8_xnnpack.pte", ("integrity", "pte-program")),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with a versioned bucket; yields the environment that points
    s3fs at it."""
    pytest.importorskip("s3fs", reason="the dev extra installs s3fs")
    server_mod = pytest.importorskip("moto.server", reason="the dev extra installs moto[server]")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "NO_PROXY": "*",
        "no_proxy": "*",
    }
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    env["_client"] = client  # type: ignore[assignment]
    try:
        yield env
    finally:
        server.stop()


def _put(s3: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    return s3["_client"].put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())


def qg(*args: str, env: dict[str, Any], pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full.update({k: v for k, v in env.items() if not k.startswith("_")})
    full["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(SRC)) if p)
    return subprocess.run([sys.executable, "-m", "quantgate", *args], capture_output=True, text=True, env=full,
                          timeout=180)


def _guard(guard: str, target: str, env: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    proc = qg("guard", guard, target, env=env)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize(("rel", "guards"), CASES, ids=[c[0] for c in CASES])
def test_s3_result_equals_local(s3: dict[str, Any], rel: str, guards: tuple[str, ...]) -> None:
    put = _put(s3, rel, FIX / rel)
    url = f"s3://{BUCKET}/{rel}"
    for guard in guards:
        code_local, local, _ = _guard(guard, str(FIX / rel), s3)
        code, remote, err = _guard(guard, url, s3)
        assert code == code_local, err
        assert _comparable(remote) == _comparable(local)
        prov = remote["artifact"]["remote"]
        assert prov["url"] == url and prov["size"] == (FIX / rel).stat().st_size
        assert prov["etag"] == put["ETag"]
        assert prov["revision"] == put["VersionId"]
        assert 0 < prov["bytes_fetched"] <= prov["size"]
        assert jsonschemas.validate(remote, "guard-result") == []


def test_s3_large_gguf_reads_a_small_fraction(s3: dict[str, Any], tmp_path: Path) -> None:
    # ~36 MB of Q8_0 weights described by a header of a few KB: the header and a block past it are read
    size = _sparse_gguf(tmp_path / "big.gguf", n_tensors=8, rows=1024, cols=4096)
    _put(s3, "big/big.gguf", tmp_path / "big.gguf")
    code_local, local, _ = _guard("gguf-dtypes", str(tmp_path / "big.gguf"), s3)
    code, remote, err = _guard("gguf-dtypes", f"s3://{BUCKET}/big/big.gguf", s3)
    assert (code, _comparable(remote)) == (code_local, _comparable(local)), err
    assert remote["metrics"]["params_total"] == 8 * 1024 * 4096
    assert remote["metrics"]["coverage"]["params"]["quantized"] == 1.0
    prov = remote["artifact"]["remote"]
    assert prov["size"] == size > 30_000_000
    assert prov["bytes_fetched"] <= 256 << 10  # < 1% of the object


def test_s3_run_with_sha256_streams_it_once(s3: dict[str, Any]) -> None:
    rel = "release/tiny-llama-q8_0.gguf"
    _put(s3, rel, FIX / rel)
    url = f"s3://{BUCKET}/{rel}"
    proc = qg("run", url, "--guards", "integrity,gguf-dtypes", "--sha256", "--format", "json", env=s3)
    local = qg("run", str(FIX / rel), "--guards", "integrity,gguf-dtypes", "--sha256", "--format", "json", env=s3)
    assert proc.returncode == local.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout is the report alone
    assert report["artifacts"][0]["sha256"] == hashlib.sha256((FIX / rel).read_bytes()).hexdigest()
    assert [a["path"] for a in report["artifacts"]] == [url]
    assert [_comparable(r) for r in report["results"]] == [_comparable(r) for r in json.loads(local.stdout)["results"]]


def test_s3_sha256_reports_progress_and_reads_each_byte_once(s3: dict[str, Any], monkeypatch: Any) -> None:
    rel = "gguf/model_q4_0.gguf"
    _put(s3, rel, FIX / rel)
    for key, value in s3.items():
        if not key.startswith("_"):
            monkeypatch.setenv(key, value)
    from quantgate.core import progress, remote

    seen: list[tuple[str, int, int]] = []

    class Recorder:
        def __init__(self, label: str, total: int, unit: str = ""):
            self.label, self.total, self.done = label, total, 0

        def update(self, n: int) -> None:
            self.done += n

        def close(self) -> None:
            seen.append((self.label, self.total, self.done))

    monkeypatch.setattr(progress, "Progress", Recorder)
    url = f"s3://{BUCKET}/{rel}"
    remote._OPEN.pop(url, None)
    size = (FIX / rel).stat().st_size
    assert remote.sha256_url(url, "x") == hashlib.sha256((FIX / rel).read_bytes()).hexdigest()
    assert seen == [("sha256 x", size, size)]
    rf = remote.open_file(url)
    assert rf.bytes_fetched == min(rf.block, size) + size  # the first block, then one streamed pass


def test_s3_missing_object_is_an_error(s3: dict[str, Any]) -> None:
    proc = qg("guard", "integrity", f"s3://{BUCKET}/no/such.gguf", env=s3)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"quantgate: error: s3://{BUCKET}/no/such.gguf: not found\n"


def test_s3_truncated_read_is_an_error(s3: dict[str, Any], monkeypatch: Any) -> None:
    # a store answering a range with fewer bytes than asked: an error, never zeros in the gap
    rel = "gguf/model_q4_0.gguf"
    _put(s3, rel, FIX / rel)
    for key, value in s3.items():
        if not key.startswith("_"):
            monkeypatch.setenv(key, value)
    from quantgate.core import remote

    monkeypatch.setenv("QUANTGATE_REMOTE_BLOCK", "512")
    url = f"s3://{BUCKET}/{rel}"
    remote._OPEN.pop(url, None)
    rf = remote.open_file(url)
    real = remote._s3_range  # the one ranged GetObject every s3:// read makes
    monkeypatch.setattr(remote, "_s3_range", lambda *args: real(*args)[:-1])
    with pytest.raises(remote.RemoteError, match=r"truncated response \("):
        rf.read(4096, 16)
    remote._OPEN.pop(url, None)


@pytest.mark.parametrize(("scheme", "extra", "package"), [("s3", "s3", "s3fs"), ("gs", "gcs", "gcsfs")])
def test_missing_backend_names_the_extra(tmp_path: Path, scheme: str, extra: str, package: str) -> None:
    # the backend refuses to import, as when it is not installed
    (tmp_path / f"{package}.py").write_text("raise ImportError('not installed')\n", encoding="utf-8")
    url = f"{scheme}://bucket/model.gguf"
    proc = qg("guard", "integrity", url, env={}, pythonpath=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"quantgate: error: {url}: reading {scheme}:// needs the {package} package: "
        f"pip install 'quantgate[{extra}]'\n"
    )
    run = qg("run", url, "--guards", "integrity", "--format", "json", env={}, pythonpath=str(tmp_path))
    assert run.returncode == 2, run.stderr
    finding = json.loads(run.stdout)["results"][0]["findings"][0]
    assert finding["code"] == "FILE_UNREADABLE"
    assert f"pip install 'quantgate[{extra}]'" in finding["message"]


def test_scheme_dispatch() -> None:
    from quantgate.core import remote

    assert all(remote.is_url(u) for u in ("s3://b/k", "gs://b/k", "https://h/k", "http://h/k"))
    assert not remote.is_url("s3:/b/k") and not remote.is_url("file:///x")
    assert remote.is_fsspec("gs://b/k") and remote.is_fsspec("S3://b/k") and not remote.is_fsspec("https://h/k")
    assert remote.display_url("s3://bucket/a/b.gguf") == "s3://bucket/a/b.gguf"
    assert remote.join("gs://bucket/a/b.gguf", "c.gguf") == "gs://bucket/a/c.gguf"


@pytest.fixture(scope="module")
def gcs() -> Iterator[dict[str, Any]]:
    """gcp-storage-emulator on 127.0.0.1 with a bucket; yields the environment that points gcsfs at it."""
    pytest.importorskip("gcsfs", reason="the dev extra installs gcsfs")
    emulator = pytest.importorskip("gcp_storage_emulator.server", reason="the dev extra installs gcp-storage-emulator")
    port = _free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    env: dict[str, Any] = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}", "NO_PROXY": "*", "no_proxy": "*",
                           "GOOGLE_APPLICATION_CREDENTIALS": "", "GOOGLE_CLOUD_PROJECT": "test"}
    try:
        yield env
    finally:
        server.stop()


def _gcs_put(gcs: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    import gcsfs

    fs = gcsfs.GCSFileSystem(endpoint_url=gcs["STORAGE_EMULATOR_HOST"], skip_instance_cache=True)
    fs.pipe_file(f"{BUCKET}/{key}", path.read_bytes())
    return fs.info(f"{BUCKET}/{key}")


@pytest.mark.parametrize(("rel", "guards"), CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_gs_result_equals_local(gcs: dict[str, Any], rel: str, guards: tuple[str, ...]) -> None:
    info = _gcs_put(gcs, rel, FIX / rel)
    url = f"gs://{BUCKET}/{rel}"
    for guard in guards:
        code_local, local, _ = _guard(guard, str(FIX / rel), gcs)
        code, remote, err = _guard(guard, url, gcs)
        assert code == code_local, err
        assert _comparable(remote) == _comparable(local)
        prov = remote["artifact"]["remote"]
        assert prov["url"] == url and prov["size"] == (FIX / rel).stat().st_size
        assert prov["revision"] == str(info["generation"]) and prov["etag"] == info["etag"]
        assert jsonschemas.validate(remote, "guard-result") == []


def test_gs_large_gguf_reads_a_small_fraction(gcs: dict[str, Any], tmp_path: Path) -> None:
    _sparse_gguf(tmp_path / "big.gguf", n_tensors=8, rows=1024, cols=4096)
    _gcs_put(gcs, "big/big.gguf", tmp_path / "big.gguf")
    code_local, local, _ = _guard("gguf-dtypes", str(tmp_path / "big.gguf"), gcs)
    code, remote, err = _guard("gguf-dtypes", f"gs://{BUCKET}/big/big.gguf", gcs)
    assert (code, _comparable(remote)) == (code_local, _comparable(local)), err
    assert remote["artifact"]["remote"]["bytes_fetched"] <= 256 << 10
