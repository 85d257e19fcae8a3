"""Object stores beyond one object: the files beside an `s3://`/`gs://` artifact, a prefix listed like a
local folder, and reads pinned to the object opened (quantgate.core.remote, docs/discovery.md).

moto's S3 server runs here on 127.0.0.1 with its WSGI app wrapped to record every request (method, key,
query, body bytes sent), so a test can assert what was read and what never was; one gcp-storage-emulator
case (slow) covers gs://. The results are compared with the same files gated locally.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.test_remote import (
    _comparable,
    serve,  # noqa: F401  (a fixture)
)
from tests.test_remote import _guard as _http_guard
from tests.test_remote_fsspec import BUCKET as GS_BUCKET  # the emulator's bucket
from tests.test_remote_fsspec import _free_port, _gcs_put, gcs, qg  # noqa: F401  (gcs is a fixture)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
BUCKET, PLAIN = "stores", "stores-plain"  # versioned; not versioned (moto's store is per process: not "models")


class Recorder:
    """moto's WSGI app, recording each request: method, path (/bucket/key), query, body bytes sent."""

    def __init__(self, app: Any):
        self.app = app
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        entry = {"method": environ["REQUEST_METHOD"], "path": path, "query": environ.get("QUERY_STRING", ""),
                 "bytes": 0}
        with self.lock:
            self.log.append(entry)
        for chunk in self.app(environ, start_response):
            entry["bytes"] += len(chunk)
            yield chunk

    def get_bytes(self, prefix: str) -> int:
        """Body bytes of the object GETs under /bucket/prefix."""
        return sum(e["bytes"] for e in self.log if e["method"] == "GET" and e["path"].startswith(prefix)
                   and "list-type" not in e["query"])

    def paths(self) -> set[str]:
        return {e["path"] for e in self.log}


@pytest.fixture(scope="module")
def store() -> Iterator[dict[str, Any]]:
    """moto's S3 server on 127.0.0.1, its requests recorded, with a versioned bucket and a plain one."""
    pytest.importorskip("s3fs", reason="the dev extra installs s3fs")
    server_mod = pytest.importorskip("moto.server", reason="the dev extra installs moto[server]")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    recorder = Recorder(server._server.app)
    server._server.app = recorder
    env: dict[str, Any] = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "NO_PROXY": "*", "no_proxy": "*",
    }
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    client.create_bucket(Bucket=PLAIN)
    env["_client"], env["_log"] = client, recorder
    try:
        yield env
    finally:
        server.stop()
        _forget_filesystems()


def _forget_filesystems() -> None:
    """fsspec keeps one s3fs instance per process, bound to the endpoint in the environment when made:
    in-process tests make theirs against this module's server, and leave none behind."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _upload(store: dict[str, Any], folder: Path, prefix: str, bucket: str = BUCKET) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store["_client"].put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}",
                                        Body=path.read_bytes())


def _guard(guard: str, target: str, env: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    proc = qg("guard", guard, target, env=env)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def _in_process(store: dict[str, Any], monkeypatch: Any) -> Any:
    for key, value in store.items():
        if not key.startswith("_"):
            monkeypatch.setenv(key, value)
    from quantgate.core import remote

    _forget_filesystems()
    remote._OPEN.clear()
    remote._MISSING.clear()
    return remote


SIBLING_CASES = [
    # (folder, artifact in it, guards): each needs the files beside it to give the local result
    ("safetensors/sharded", "model-00001-of-00004.safetensors", ("integrity", "safetensors-dtypes")),
    ("onnx/external", "model.onnx", ("integrity", "onnx-dtypes", "size-heuristic")),
    ("pte/ext", "fp32_portable_extconst.pte", ("integrity", "pte-program")),
]


@pytest.mark.parametrize(("folder", "name", "guards"), SIBLING_CASES, ids=[c[0] for c in SIBLING_CASES])
def test_s3_siblings_give_the_local_result(store: dict[str, Any], folder: str, name: str,
                                           guards: tuple[str, ...]) -> None:
    # on main: ONNX_EXTERNAL_MISSING (integrity FAIL), PTE_EXTERNAL_DATA_MISSING: no sibling looked up
    prefix = f"siblings/{folder}"
    _upload(store, FIX / folder, prefix)
    url = f"s3://{BUCKET}/{prefix}/{name}"
    for guard in guards:
        code_local, local, _ = _guard(guard, str(FIX / folder / name), store)
        code, remote, err = _guard(guard, url, store)
        assert (code, _comparable(remote)) == (code_local, _comparable(local)), err
        assert remote["artifact"]["remote"]["url"] == url
    served, size = _small_blocks(store, guards[0], url, str(FIX / folder / name), f"/{BUCKET}/{prefix}/")
    assert 0 < served < size // 3  # headers, the program, the graph: not the weights
    if folder == "onnx/external":  # the external data is only sized: its first block, when opened
        assert store["_log"].get_bytes(f"/{BUCKET}/{prefix}/model.onnx.data") == 512


def _small_blocks(store: dict[str, Any], guard: str, url: str, local: str, prefix: str) -> tuple[int, int]:
    """The guard on `url` read in 512-byte blocks (every region a reader walks fetched in pieces) gives the
    local result; returns the object bytes served under `prefix` and the size of the objects there."""
    log = store["_log"]
    log.log.clear()
    code_local, want, _ = _guard(guard, local, store)
    code, got, err = _guard(guard, url, {**store, "QUANTGATE_REMOTE_BLOCK": "512"})
    assert (code, _comparable(got)) == (code_local, _comparable(want)), err
    folder = Path(local).parent
    return log.get_bytes(prefix), sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def test_s3_sharded_safetensors_missing_shard_as_locally(store: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(FIX / "safetensors/sharded", folder)
    (folder / "model-00004-of-00004.safetensors").unlink()
    _upload(store, folder, "missing/sharded")
    code_local, local, _ = _guard("integrity", str(folder / "model-00001-of-00004.safetensors"), store)
    code, remote, err = _guard("integrity", f"s3://{BUCKET}/missing/sharded/model-00001-of-00004.safetensors", store)
    assert (code, _comparable(remote)) == (code_local, _comparable(local)), err
    assert code == 1
    assert [f["code"] for f in remote["findings"]] == ["ST_INDEX_SHARD_MISSING"]  # main: no finding


def _sharded_sparse(folder: Path) -> int:
    """Two 16 MiB safetensors shards (their weights a sparse hole) and their index: headers are all a
    reader needs."""
    folder.mkdir()
    weight_map, nbytes = {}, 1024 * 1024 * 2
    for k in (1, 2):
        shard = folder / f"model-0000{k}-of-00002.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        for i in range(8):
            name = f"model.layers.{8 * (k - 1) + i}.mlp.up_proj.weight"
            header[name] = {"dtype": "BF16", "shape": [1024, 1024], "data_offsets": [i * nbytes, (i + 1) * nbytes]}
            weight_map[name] = shard.name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(shard, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            handle.truncate(8 + len(raw) + 8 * nbytes)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 16 * nbytes}, "weight_map": weight_map}))
    return 16 * nbytes


def test_s3_sharded_checkpoint_reads_its_headers_only(store: dict[str, Any], tmp_path: Path) -> None:
    total = _sharded_sparse(tmp_path / "big")
    _upload(store, tmp_path / "big", "big")
    log = store["_log"]
    log.log.clear()
    local = qg("run", str(tmp_path / "big"), "--guards", "integrity,safetensors-dtypes", "--format", "json",
               env=store)
    proc = qg("run", f"s3://{BUCKET}/big/", "--guards", "integrity,safetensors-dtypes", "--format", "json",
              env=store)
    report, want = json.loads(proc.stdout), json.loads(local.stdout)
    assert (proc.returncode, local.returncode) == (1, 1), proc.stderr  # unquantized BF16: safetensors-dtypes FAILs
    assert [(r["guard"], r["status"]) for r in report["results"]] == [
        ("integrity", "PASS"), ("safetensors-dtypes", "FAIL")] * 2
    assert [a["path"] for a in report["artifacts"]] == [f"s3://{BUCKET}/big/model-0000{k}-of-00002.safetensors"
                                                        for k in (1, 2)]
    assert [_comparable(r) for r in report["results"]] == [_comparable(r) for r in want["results"]]
    assert {r["metrics"].get("params_total") for r in report["results"]} - {None} == {8 * 1024 * 1024}
    # each shard's first 64 KiB block (its header), the index: < 0.5% of the 32 MiB checkpoint
    served = log.get_bytes(f"/{BUCKET}/big/")
    assert total == 32 << 20 and served <= 2 * (64 << 10) + 4096


def test_s3_gguf_split_set_is_gated_as_the_local_set(store: dict[str, Any], tmp_path: Path) -> None:
    from tests.test_gguf_llamacpp import SET_METRICS, split_set

    shards = split_set(tmp_path)
    _upload(store, shards[0].parent, "split")
    url = f"s3://{BUCKET}/split/{shards[0].name}"
    code_local, local, _ = _guard("gguf-dtypes", str(shards[0]), store)
    code, remote, err = _guard("gguf-dtypes", url, store)
    # on main: GGUF_SPLIT_MISSING for shards 2 and 3 (looked up with os.stat)
    assert (code_local, local["findings"]) == (0, [])
    assert (code, remote["findings"]) == (0, []), err
    for name in SET_METRICS:
        assert remote["metrics"][name] == local["metrics"][name], name
    assert remote["metrics"]["tensor_count"] == 12
    served, size = _small_blocks(store, "gguf-dtypes", url, str(shards[0]), f"/{BUCKET}/split/")
    assert served <= 3 * 4096 and size > 300_000  # each shard's header, in 512-byte blocks
    # the prefix: one artifact, the other shards folded into it as a local folder's are
    proc = qg("run", f"s3://{BUCKET}/split", "--guards", "integrity", "--format", "json", env=store)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert [a["path"] for a in report["artifacts"]] == [url]
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [
        (f"s3://{BUCKET}/split/{p.name}", "split_shard") for p in shards[1:]]


def test_hostile_sibling_names_are_refused_as_over_http(store: dict[str, Any], serve: Any,  # noqa: F811
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "release"
    shutil.copytree(FIX / "safetensors/sharded", folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: ("../other/x.safetensors" if v.endswith("00004-of-00004.safetensors") else v)
                           for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "other").mkdir()
    shutil.copy(FIX / "safetensors/sharded/model-00004-of-00004.safetensors", tmp_path / "other/x.safetensors")
    _upload(store, tmp_path, "hostile")
    log = store["_log"]
    log.log.clear()
    first = "release/model-00001-of-00004.safetensors"
    code_local, local, _ = _guard("integrity", str(tmp_path / first), store)
    code_http, http, _ = _http_guard("integrity", f"{serve(tmp_path).base}/{first}")
    code, remote, err = _guard("integrity", f"s3://{BUCKET}/hostile/{first}", store)
    codes = [f["code"] for f in remote["findings"]]
    assert "ST_INDEX_SHARD_PATH_INVALID" in codes, err
    assert codes == [f["code"] for f in http["findings"]] == [f["code"] for f in local["findings"]]
    assert code == code_http == code_local == 1
    assert not any("other" in p for p in log.paths())  # never asked for, let alone read


def test_join_is_right_per_scheme() -> None:
    from quantgate.core import remote

    # an object key is not URL-encoded: `%` and spaces are part of the name
    assert remote.join("s3://b/a/m.onnx", "w 1%.bin") == "s3://b/a/w 1%.bin"
    assert remote.join("https://h/a/m.onnx", "w 1%.bin") == "https://h/a/w%201%25.bin"
    assert remote.join("gs://b/m.onnx", "sub/./w.bin") == "gs://b/sub/w.bin"
    assert remote.basename("s3://b/a/w%201.bin") == "w%201.bin"
    assert remote.basename("https://h/a/w%201.bin") == "w 1.bin"
    for name in ("../other/x.bin", "sub/../../x", "", "./"):
        with pytest.raises(remote.RemoteError, match="is not a plain relative path beside"):
            remote.join("s3://b/a/m.onnx", name)


# --- a prefix, listed ---------------------------------------------------------------------------

def _tree(root: Path) -> None:
    """A release folder: two models at two depths, a README, a model under .git (never scanned)."""
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    shutil.copy(FIX / "release/tiny-llama-q8_0.gguf", root / "tiny-llama-q8_0.gguf")
    shutil.copy(FIX / "release/tiny-llama-w8a8.safetensors", root / "sub/tiny-llama-w8a8.safetensors")
    shutil.copy(FIX / "gguf/model_q4_0.gguf", root / ".git/model_q4_0.gguf")
    (root / "README.md").write_text("release notes\n")


def test_s3_prefix_is_gated_like_the_local_folder(store: dict[str, Any], tmp_path: Path) -> None:
    # on main: `not a file (a prefix or bucket); name one object`, FILE_UNREADABLE
    _tree(tmp_path / "rel")
    _upload(store, tmp_path / "rel", "rel")
    guards = ("--guards", "integrity,gguf-dtypes,safetensors-dtypes,size-heuristic", "--format", "json")
    local = json.loads(qg("run", str(tmp_path / "rel"), *guards, env=store).stdout)
    shown = [f"s3://{BUCKET}/rel/tiny-llama-q8_0.gguf", f"s3://{BUCKET}/rel/sub/tiny-llama-w8a8.safetensors"]
    for given in (f"s3://{BUCKET}/rel/", f"s3://{BUCKET}/rel"):  # a trailing `/` or a prefix that is no object
        proc = qg("run", given, *guards, env=store)
        report = json.loads(proc.stdout)
        assert proc.returncode == 0, [r for r in report["results"] if r["status"] == "ERROR"]
        assert [a["path"] for a in report["artifacts"]] == sorted(shown)
        assert report["skipped"] == []
        assert report["verdict"] == local["verdict"] == "PASS"
        by_name = {os.path.basename(r["artifact"]["path"]): _comparable(r) for r in report["results"]}
        assert by_name == {os.path.basename(r["artifact"]["path"]): _comparable(r) for r in local["results"]}
    policy = tmp_path / "quantgate.toml"  # a policy's exclude patterns apply to the listed keys
    policy.write_text('[quantgate]\nversion = 1\nexclude = ["*.gguf"]\n')
    excluded = json.loads(qg("run", f"s3://{BUCKET}/rel/", "--policy", str(policy), *guards, env=store).stdout)
    assert [a["path"] for a in excluded["artifacts"]] == [shown[1]]
    store["_client"].create_bucket(Bucket="stores-root")  # a bare bucket is its whole listing
    store["_client"].put_object(Bucket="stores-root", Key="m.gguf", Body=(FIX / "gguf/model_q4_0.gguf").read_bytes())
    root = json.loads(qg("run", "s3://stores-root", *guards, env=store).stdout)
    assert ([a["path"] for a in root["artifacts"]], root["verdict"]) == (["s3://stores-root/m.gguf"], "PASS")
    missing = qg("run", f"s3://{BUCKET}/no-such-prefix/", env=store)
    assert (missing.returncode, missing.stdout) == (4, "")
    assert missing.stderr.splitlines()[-1] == (
        f"quantgate: error: s3://{BUCKET}/no-such-prefix/: no object under the prefix")


def test_s3_hostile_keys_are_never_read_and_printed_inert(store: dict[str, Any]) -> None:
    client, log = store["_client"], store["_log"]
    body = (FIX / "gguf/model_q4_0.gguf").read_bytes()
    client.put_object(Bucket=BUCKET, Key="evil/ok.gguf", Body=body)
    from moto.s3.models import s3_backends

    # into moto's store directly: an HTTP PUT of a `..` key has its path normalised on the way
    backend = s3_backends["123456789012"]["global"]
    backend.put_object(BUCKET, "evil/a/../../outside.gguf", body)
    backend.put_object(BUCKET, "evil/\x1b[2Jx\x9b1m.gguf", body)
    log.log.clear()
    proc = qg("run", f"s3://{BUCKET}/evil/", "--guards", "integrity", "--format", "json", env=store)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert [a["path"] for a in report["artifacts"]] == [f"s3://{BUCKET}/evil/\x1b[2Jx\x9b1m.gguf",
                                                        f"s3://{BUCKET}/evil/ok.gguf"]
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [
        (f"s3://{BUCKET}/evil/a/../../outside.gguf", "not_a_file")]
    assert not any(".." in p for p in log.paths())  # the `..` key: listed, never requested
    text = qg("run", f"s3://{BUCKET}/evil/", "--guards", "integrity", env=store)
    assert "\x1b" not in text.stdout + text.stderr and "\x9b" not in text.stdout + text.stderr
    assert "\\x1b[2Jx\\x9b1m.gguf" in text.stdout


def test_s3_prefix_listing_is_bounded(store: dict[str, Any], monkeypatch: Any) -> None:
    for k in range(5):
        store["_client"].put_object(Bucket=BUCKET, Key=f"many/m{k}.gguf", Body=b"")
    remote = _in_process(store, monkeypatch)
    from quantgate.gate import UsageError
    from quantgate.gate.discovery import discover

    monkeypatch.setattr(remote, "STORE_MAX_OBJECTS", 3)
    log = store["_log"]
    log.log.clear()
    with pytest.raises(UsageError) as caught:
        discover([f"s3://{BUCKET}/many/"])
    assert str(caught.value) == (f"s3://{BUCKET}/many/: more than 3 objects under the prefix (quantgate lists "
                                 "at most 3); name a narrower prefix")
    (listing,) = log.log  # one page, asking for no more than the bound allows
    assert "max-keys=8" in listing["query"] and "prefix=many%2F" in listing["query"]


# --- an object replaced while it is read ---------------------------------------------------------

def test_s3_object_replaced_mid_read_is_an_error(store: dict[str, Any], monkeypatch: Any) -> None:
    # a bucket without versioning: the reads carry If-Match on the ETag opened (on main: a mix of two files)
    original = (FIX / "gguf/model_q4_0.gguf").read_bytes()
    store["_client"].put_object(Bucket=PLAIN, Key="m.gguf", Body=original)
    remote = _in_process(store, monkeypatch)
    monkeypatch.setenv("QUANTGATE_REMOTE_BLOCK", "512")
    rf = remote.open_file(f"s3://{PLAIN}/m.gguf")
    assert rf.read(1024, 16) == original[1024:1040] and rf.version is None
    store["_client"].put_object(Bucket=PLAIN, Key="m.gguf", Body=bytes(len(original)))
    with pytest.raises(remote.RemoteError) as caught:
        rf.read(4096, 16)
    assert str(caught.value) == f"s3://{PLAIN}/m.gguf: the file changed while it was read (its ETag no longer matches)"


def test_s3_versioned_object_reads_stay_on_the_version_opened(store: dict[str, Any], monkeypatch: Any) -> None:
    original = (FIX / "gguf/model_q4_0.gguf").read_bytes()
    put = store["_client"].put_object(Bucket=BUCKET, Key="v/m.gguf", Body=original)
    remote = _in_process(store, monkeypatch)
    monkeypatch.setenv("QUANTGATE_REMOTE_BLOCK", "512")
    url = f"s3://{BUCKET}/v/m.gguf"
    rf = remote.open_file(url)
    assert rf.version == put["VersionId"]
    store["_client"].put_object(Bucket=BUCKET, Key="v/m.gguf", Body=bytes(len(original)))
    log = store["_log"]
    log.log.clear()
    assert rf.read(4096, 16) == original[4096:4112]  # the version opened, not the new one
    assert [e["query"] for e in log.log] == [f"versionId={put['VersionId']}"]
    # that version deleted: the same one-line error, never the newer bytes
    store["_client"].delete_object(Bucket=BUCKET, Key="v/m.gguf", VersionId=put["VersionId"])
    with pytest.raises(remote.RemoteError) as caught:
        rf.read(8192, 16)
    assert str(caught.value) == f"{url}: the file changed while it was read (the version opened is gone)"


def test_s3_version_read_denied_falls_back_to_if_match(store: dict[str, Any], monkeypatch: Any) -> None:
    # reading by VersionId needs s3:GetObjectVersion; a role with only s3:GetObject still reads, by ETag
    original = (FIX / "gguf/model_q4_0.gguf").read_bytes()
    put = store["_client"].put_object(Bucket=BUCKET, Key="denied/m.gguf", Body=original)
    remote = _in_process(store, monkeypatch)
    real = remote._s3_range
    asked: list[tuple[str | None, str | None]] = []

    def deny_versions(fs: Any, path: str, start: int, end: int, etag: str | None, version: str | None) -> bytes:
        asked.append((etag, version))
        if version:
            raise PermissionError("AccessDenied")
        return real(fs, path, start, end, etag, version)

    monkeypatch.setattr(remote, "_s3_range", deny_versions)
    rf = remote.open_file(f"s3://{BUCKET}/denied/m.gguf")
    assert rf.read(0, 4) == b"GGUF"
    assert asked == [(put["ETag"], put["VersionId"]), (put["ETag"], None)]
    assert rf.provenance()["revision"] == put["VersionId"]  # still recorded


# --- gs:// (one case: the emulator is slow) ------------------------------------------------------

def test_gs_prefix_with_external_data_equals_local(gcs: dict[str, Any]) -> None:  # noqa: F811
    for path in (FIX / "onnx/external").iterdir():
        _gcs_put(gcs, f"ext/{path.name}", path)
    guards = ("--guards", "integrity,onnx-dtypes", "--format", "json")
    local = json.loads(qg("run", str(FIX / "onnx/external"), *guards, env=gcs).stdout)
    proc = qg("run", f"gs://{GS_BUCKET}/ext/", *guards, env=gcs)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert [a["path"] for a in report["artifacts"]] == [f"gs://{GS_BUCKET}/ext/model.onnx"]
    assert [_comparable(r) for r in report["results"]] == [_comparable(r) for r in local["results"]]
    assert [r["status"] for r in report["results"]] == ["PASS", "PASS"]


def test_s3_sha256_of_an_object_replaced_after_its_reads_is_no_digest(store: dict[str, Any], monkeypatch: Any) -> None:
    # --sha256 streams by the same pinned ranged reads: the digest is of the revision the guards read
    original = (FIX / "gguf/model_q4_0.gguf").read_bytes()
    store["_client"].put_object(Bucket=PLAIN, Key="h.gguf", Body=original)
    remote = _in_process(store, monkeypatch)
    url = f"s3://{PLAIN}/h.gguf"
    assert remote.open_file(url).read(0, 16) == original[:16]
    assert remote.sha256_url(url, "h") == hashlib.sha256(original).hexdigest()
    store["_client"].put_object(Bucket=PLAIN, Key="h.gguf", Body=bytes(len(original)))
    with pytest.raises(remote.RemoteError) as caught:
        remote.sha256_url(url, "h")
    assert str(caught.value) == f"{url}: the file changed while it was read (its ETag no longer matches)"


def test_gs_reads_and_sha256_ask_for_the_generation_opened(gcs: dict[str, Any], monkeypatch: Any) -> None:  # noqa: F811
    # GCS serves `?generation=N` as that revision or 404 once it is gone; the emulator serves the newest
    # object whatever is asked, so what is checked here is the asking: every read names the generation
    import gcsfs

    info = _gcs_put(gcs, "pin/m.gguf", FIX / "gguf/model_q4_0.gguf")
    for key, value in gcs.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QUANTGATE_REMOTE_BLOCK", "512")
    from quantgate.core import remote

    gcsfs.GCSFileSystem.clear_instance_cache()
    remote._OPEN.clear()
    url = f"gs://{GS_BUCKET}/pin/m.gguf"
    rf = remote.open_file(url)
    assert rf.version == str(info["generation"])
    seen: list[str] = []
    call = rf.fs._call

    async def recording(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(str(path))
        return await call(method, path, *args, **kwargs)

    monkeypatch.setattr(rf.fs, "_call", recording)
    data = (FIX / "gguf/model_q4_0.gguf").read_bytes()
    assert rf.read(4096, 16) == data[4096:4112]
    assert remote.sha256_url(url, "m") == hashlib.sha256(data).hexdigest()
    assert len(seen) >= 2 and all(f"generation={rf.version}" in u for u in seen), seen
    remote._OPEN.clear()
    gcsfs.GCSFileSystem.clear_instance_cache()
