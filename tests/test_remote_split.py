"""A GGUF split set (`-00001-of-0000N.gguf`) behind URLs: gated as one model, as a local split set is.

Discovery folds shards 2..N of an `hf://` listing into the first shard (`split_shard`); the first
shard's reader looks the other shards up beside its URL (`remote.join` + `remote.exists`) and gates the
set as one model, as it does for a local set (a URL's folder cannot be listed, so no stray-shard check).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.test_gguf_llamacpp import SET_METRICS, split_set
from tests.test_remote import TOKEN, _guard, qg, serve  # noqa: F401  (serve is a fixture)


def test_hf_split_set_is_one_artifact(serve: Any, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "local").mkdir()
    shards = split_set(tmp_path / "local")
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    api = tmp_path / "hub/api/models/org/split/revision"
    api.mkdir(parents=True)
    (api / "main").write_text(json.dumps({"sha": sha, "siblings": [{"rfilename": p.name} for p in shards]}))
    folder = tmp_path / f"hub/org/split/resolve/{sha}"
    folder.mkdir(parents=True)
    for p in shards:
        shutil.copy(p, folder / p.name)
    served = serve(tmp_path / "hub", mode="auth")
    proc = qg("run", "hf://org/split", "--guards", "integrity", "--format", "json",
              HF_ENDPOINT=served.base, HF_TOKEN=TOKEN)
    report = json.loads(proc.stdout)
    first = f"hf://org/split@{sha}/{shards[0].name}"
    assert [a["path"] for a in report["artifacts"]] == [first]
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [
        (f"hf://org/split@{sha}/{p.name}", "split_shard") for p in shards[1:]
    ]
    (result,) = report["results"]
    assert result["artifact"]["remote"]["revision"] == sha  # the commit the listing resolved


def test_remote_split_set_is_gated_as_the_local_set(serve: Any, tmp_path: Path) -> None:  # noqa: F811
    shards = split_set(tmp_path)
    served = serve(tmp_path)
    url = f"{served.base}/{shards[0].relative_to(tmp_path).as_posix()}"
    code_local, local, _ = _guard("gguf-dtypes", str(shards[0]))
    # today: integrity FAIL, GGUF_SPLIT_MISSING for shards 2 and 3 (looked up with os.stat)
    integrity_code, integrity, _ = _guard("integrity", url)
    assert (integrity_code, integrity["findings"]) == (0, [])
    code, remote, err = _guard("gguf-dtypes", url)
    assert (code_local, local["findings"]) == (0, [])
    assert (code, remote["findings"]) == (0, []), err
    for name in SET_METRICS:
        assert remote["metrics"][name] == local["metrics"][name], name
    assert remote["metrics"]["tensor_count"] == 12
