"""Artifact I/O: Parquet and JSON written atomically, manifests, content hashes.

Paths are local paths or fsspec URIs (`s3://...`). A local file is written to a temp file
in the same folder and renamed into place, so a killed writer never leaves a partial file
under the final name. Object stores publish an object only when its upload completes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

import sbt_core

MANIFEST = "manifest.json"


def _fs(uri: str):
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def is_local(uri: str) -> bool:
    return "://" not in str(uri) or str(uri).startswith("file://")


def join(base: str, *parts: str) -> str:
    base = str(base)
    return "/".join([base.rstrip("/"), *parts]) if not is_local(base) else str(Path(base, *parts))


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def write_bytes(uri: str, data: bytes) -> None:
    if is_local(uri):
        path = Path(str(uri).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        fs, path = _fs(uri)
        with fs.open(path, "wb") as f:
            f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_parquet(table: pa.Table, uri: str) -> str:
    """Write a table; the same table gives the same bytes (no timestamps, no pandas metadata)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(None), sink, compression="zstd")
    write_bytes(uri, sink.getvalue().to_pybytes())
    return str(uri)


def read_parquet(uri: str) -> pa.Table:
    if not exists(uri):
        raise FileNotFoundError(f"no such artifact: {uri}")
    return pq.read_table(pa.BufferReader(read_bytes(uri)))


def write_json(obj: Any, uri: str) -> str:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
    return str(uri)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def content_hash(uri: str) -> str:
    return hashlib.sha256(read_bytes(uri)).hexdigest()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    """Package version plus a hash of the core's source, so any code change shows."""
    root = Path(sbt_core.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return f"{sbt_core.__version__}+{h.hexdigest()[:12]}"


def write_manifest(out_dir: str, stage: str, config: dict, inputs: list[str], outputs: dict[str, str]) -> str:
    """The provenance record written beside a stage's outputs (outputs: name -> uri)."""
    files = {}
    for name, uri in outputs.items():
        entry = {"uri": str(uri), "content_hash": content_hash(uri)}
        if str(uri).endswith(".parquet"):
            entry["rows"] = pq.read_metadata(pa.BufferReader(read_bytes(uri))).num_rows
        files[name] = entry
    manifest = {
        "stage": stage,
        "config": config,
        "config_hash": config_hash(config),
        "code_version": code_version(),
        "inputs": [_input_entry(u) for u in inputs if exists(u)],
        "outputs": files,
    }
    return write_json(manifest, join(out_dir, MANIFEST))


def _input_entry(uri: str) -> dict:
    """A file input carries its content hash; a folder input (a model) only its URI."""
    fs, path = _fs(uri)
    return {"uri": str(uri)} if fs.isdir(path) else {"uri": str(uri), "content_hash": content_hash(uri)}
