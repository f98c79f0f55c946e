"""Artifacts on S3 (moto's server over real HTTP): atomic objects, retries, folders, SFT to s3://."""

from __future__ import annotations

from pathlib import Path

import pytest

from sbt_core import io


def test_parquet_json_and_manifest_round_trip_on_s3(s3, data_dir, tmp_path):
    table = io.read_parquet(str(data_dir / "val_new.parquet"))
    uri = io.write_parquet(table, "s3://sbt-test/unit/val_new.parquet")
    assert io.read_parquet(uri).equals(table) and io.parquet_rows(uri) == len(table)
    local = io.write_parquet(table, str(tmp_path / "val_new.parquet"))
    assert io.content_hash(uri) == io.content_hash(local)  # same table, same bytes on either side
    io.write_manifest("s3://sbt-test/unit", "test", {"a": 1}, [uri], {"data": uri})
    manifest = io.read_json("s3://sbt-test/unit/manifest.json")
    assert manifest["outputs"]["data"]["rows"] == len(table)


def test_a_failing_write_is_retried_with_backoff(s3, monkeypatch):
    fs = io._fs("s3://sbt-test/unit")[0]  # the cached instance io writes through
    real, calls, sleeps = fs.pipe_file, [], []

    def flaky(path, data, **kw):
        calls.append(path)
        if len(calls) <= 2:
            raise ConnectionResetError("connection reset by peer")
        return real(path, data, **kw)

    monkeypatch.setattr(fs, "pipe_file", flaky)
    monkeypatch.setattr(io.time, "sleep", sleeps.append)
    io.write_bytes("s3://sbt-test/unit/flaky.txt", b"payload")
    assert len(calls) == 3 and sleeps == [0.5, 1.0]  # two failures, two backoffs, doubling
    assert io.read_bytes("s3://sbt-test/unit/flaky.txt") == b"payload"


def test_a_write_that_keeps_failing_leaves_no_object(s3, monkeypatch):
    fs = io._fs("s3://sbt-test/unit")[0]

    def broken(path, data, **kw):
        raise TimeoutError("slow network")

    monkeypatch.setattr(fs, "pipe_file", broken)
    monkeypatch.setattr(io.time, "sleep", lambda s: None)
    with pytest.raises(TimeoutError):
        io.write_bytes("s3://sbt-test/unit/never.txt", b"x" * 1000)
    monkeypatch.undo()
    assert not io.exists("s3://sbt-test/unit/never.txt")


def test_models_load_from_s3_through_a_cached_download(s3, trained, tmp_path, monkeypatch):
    from sbt_core.models import load

    monkeypatch.setenv("SBT_CACHE", str(tmp_path / "cache"))
    _, model_dir, _ = trained
    uri = io.upload_dir(model_dir, "s3://sbt-test/unit/model")
    local = io.localize_dir(uri)
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*.safetensors")) == ["model.safetensors"]
    assert io.localize_dir(uri) == local  # unchanged objects: no second download
    model, tokenizer = load(uri)
    assert tokenizer.convert_tokens_to_ids("<backtrack>") is not None and model.num_parameters() > 0


@pytest.mark.integration  # processes
def test_a_remote_folder_asked_for_by_several_processes_at_once_is_downloaded_once_whole(s3, trained, tmp_path):
    """The ranks of one SFT (or workers on one machine) localising the same s3:// model at the same moment: each
    gets the whole folder, one download, no partial or deleted files; a new version of the folder replaces the
    old one in the cache."""
    import json
    import os
    import subprocess
    import sys

    model_dir = Path(trained[1])
    uri = io.upload_dir(model_dir, "s3://sbt-test/race/model")
    probe = ("import json, logging, sys, pathlib; logging.basicConfig(level=logging.INFO); from sbt_core import io; "
             "d = pathlib.Path(io.localize_dir(sys.argv[1])); "
             "print(json.dumps({'dir': str(d), 'files': sorted((str(p.relative_to(d)), p.stat().st_size) "
             "for p in d.rglob('*') if p.is_file() and p.name != '.source.json')}))")
    env = {**os.environ, "SBT_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", probe, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    seen = [json.loads(out) for out, _ in outs]
    want = sorted((str(p.relative_to(model_dir)), p.stat().st_size) for p in model_dir.rglob("*") if p.is_file())
    assert all(s == {"dir": seen[0]["dir"], "files": [list(f) for f in want]} for s in seen)
    assert sum(err.count("downloading") for _, err in outs) == 1  # one process downloads, the others wait for it
    home = tmp_path / "cache" / "remote"
    assert [p.name for p in next(home.iterdir()).iterdir() if not p.name.startswith(".")] == [Path(seen[0]["dir"]).name]
    io.write_bytes(io.join(uri, "extra.txt"), b"a new file: a new version of the folder")
    newer = subprocess.run([sys.executable, "-c", probe, uri], capture_output=True, text=True, env=env, check=True)
    assert "extra.txt" in newer.stdout and not Path(seen[0]["dir"]).exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_superseded_work_moves_whole_and_is_found_again(where, tmp_path, request):
    """`io.move` (how a stage folder of another key is set aside) and `io.folders_in` (what `sbt gc` lists)."""
    base = str(tmp_path / "run") if where == "local" else (request.getfixturevalue("s3") and "s3://sbt-test/mv/run")
    io.write_json({"key": "k1", "status": "done"}, io.join(base, "sft-bt", "stage.json"))
    io.write_bytes(io.join(base, "sft-bt", "model", "w.bin"), b"weights")
    io.write_json({"key": "k2"}, io.join(base, "ei1", "search", "stage.json"))
    io.move(io.join(base, "sft-bt"), io.join(base, ".superseded", "sft-bt-k1"))
    io.move(io.join(base, "ei1", "search"), io.join(base, "ei1", ".superseded", "ei1-search-k2"))
    assert not io.exists(io.join(base, "sft-bt", "stage.json"))
    assert io.read_bytes(io.join(base, ".superseded", "sft-bt-k1", "model", "w.bin")) == b"weights"
    assert io.folders_in(base, ".superseded") == sorted([io.join(base, ".superseded", "sft-bt-k1"),
                                                         io.join(base, "ei1", ".superseded", "ei1-search-k2")])
    assert io.size(io.join(base, ".superseded", "sft-bt-k1")) > len(b"weights")


def test_staging_folders_are_keyed_by_uri_and_stage_key():
    uri = "s3://bucket/runs/x/sft-bt"
    assert io.staging_dir(uri, "k1") == io.staging_dir(uri, "k1")
    assert len({io.staging_dir(uri, "k1"), io.staging_dir(uri, "k2"), io.staging_dir(uri + "2", "k1")}) == 3
