"""Artifact I/O: Parquet and JSON written atomically, manifests, content hashes.

Paths are local paths or fsspec URIs (`s3://...`). A local file is written to a temp file
in the same folder and renamed into place, so a killed writer never leaves a partial file
under the final name. Object stores publish an object only when its upload completes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

import sbt_core

MANIFEST = "manifest.json"
RETRIES = 5  # attempts for a remote write
log = logging.getLogger(__name__)


_storage_options: dict[str, Any] = {}


def set_storage_options(options: dict[str, Any]) -> None:
    """fsspec options for remote URIs (e.g. s3fs `key`, `secret`, `client_kwargs.endpoint_url`),
    for credentials that come from a Prefect block rather than the AWS environment variables."""
    _storage_options.clear()
    _storage_options.update(options or {})


def _fs(uri: str):
    # No listing cache for object stores: another process (a worker) may have just written there.
    opts = {} if is_local(uri) else {"use_listings_cache": False, **_storage_options}
    return fsspec.core.url_to_fs(str(uri), **opts)


def is_local(uri: str) -> bool:
    return "://" not in str(uri) or str(uri).startswith("file://")


def join(base: str, *parts: str) -> str:
    base = str(base)
    return "/".join([base.rstrip("/"), *parts]) if not is_local(base) else str(Path(base, *parts))


def parent(uri: str) -> str:
    """The folder holding `uri` (keeps the `s3://` of a URL, unlike pathlib)."""
    head, _, _ = str(uri).rstrip("/").rpartition("/")
    return head or "."


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rpartition("/")[2]


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def remove(uri: str) -> None:
    """Delete a file or a folder tree if it exists."""
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def move(src: str, dst: str) -> str:
    """Move a file or folder tree to `dst` (a rename on a local disk; copy then delete on an object store)."""
    if is_local(src) and is_local(dst):
        target = Path(str(dst).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(str(src).removeprefix("file://"), target)
        return str(dst)
    # An object store has no rename: copy every object (server side), then delete the source; a kill in
    # between leaves both copies, never neither.
    fs, path = _fs(src)
    _, target = _fs(dst)
    root = path.rstrip("/")
    for p in fs.find(root):
        _retry(lambda: fs.copy(p, target.rstrip("/") + p[len(root):]), f"copy {p}")
    fs.rm(root, recursive=True)
    return str(dst)


def folders_in(root: str, name: str) -> list[str]:
    """Every folder directly inside a folder called `name`, at any depth under `root` (URIs as given)."""
    fs, path = _fs(root)
    base = str(root).rstrip("/")
    found = []
    for p in fs.find(path, withdirs=True, detail=False):
        rel = p[len(path.rstrip("/")) + 1:]
        parts = rel.split("/")
        if len(parts) >= 2 and parts[-2] == name and fs.isdir(p):
            found.append(join(base, *parts))
    return sorted(found)


def size(uri: str) -> int:
    """Bytes under a folder (or of a file)."""
    fs, path = _fs(uri)
    return int(fs.du(path, total=True))


def copy(src: str, dst: str) -> str:
    write_bytes(dst, read_bytes(src))
    return str(dst)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically (a temp file renamed over it); a local file's mode follows the umask, as
    `open()` does, so others can read a run on a shared filesystem."""
    if is_local(uri):
        path = Path(str(uri).removeprefix("file://"))
        local_folder(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        _retry(lambda: _put(uri, data), f"write {uri}")


def check_folder(uri: str | Path) -> None:
    """A clear error when a local file stands where an output folder (or one of its parents) is needed."""
    if not is_local(str(uri)):
        return
    path = Path(str(uri).removeprefix("file://"))
    for p in (path, *path.parents):
        if p.is_dir():
            return
        if p.exists():
            raise NotADirectoryError(f"{p} is a file, not a folder: give an output folder that is not a file")


def local_folder(path: str | Path) -> Path:
    """Make a local folder (and its parents), after `check_folder`."""
    check_folder(path)
    path = Path(str(path).removeprefix("file://"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_temp_files(folder: str, recursive: bool = True) -> list[str]:
    """Delete the `.NAME.*.tmp` files a killed `write_bytes` left in a local folder; returns them.
    (Object stores need none: a killed PUT leaves no object.)"""
    if not is_local(folder) or not Path(folder).is_dir():
        return []
    found = Path(folder).rglob(".*.tmp") if recursive else Path(folder).glob(".*.tmp")
    left = sorted(str(p) for p in found if p.is_file())
    for p in left:
        Path(p).unlink(missing_ok=True)
    return left


def _put(uri: str, data: bytes) -> None:
    # One PUT of bytes already in memory: the store publishes the object only when it completes,
    # so a killed or failed write leaves no partial object. (A streamed `fs.open(.., "wb")`
    # would commit what it had on an exception in the middle.)
    fs, path = _fs(uri)
    fs.pipe_file(path, data)


def _retry(fn, what: str, attempts: int = RETRIES, base_delay: float = 0.5):
    """Call fn, retrying transient I/O errors with exponential backoff (0.5 s, 1 s, 2 s, ...)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            raise
        except OSError as e:
            if attempt == attempts:
                raise
            delay = base_delay * 2 ** (attempt - 1)
            log.warning("%s failed (%s); retry %d/%d in %.1f s", what, e, attempt, attempts - 1, delay)
            time.sleep(delay)


def cache_root() -> Path:
    """Local scratch for remote artifacts (SBT_CACHE, default ~/.cache/sbt)."""
    return Path(os.environ.get("SBT_CACHE", "~/.cache/sbt")).expanduser()


def staging_dir(uri: str, key: str = "") -> Path:
    """A stable local folder standing in for a remote folder: the same URI and stage key give the same
    folder (a rerun resumes its checkpoints); another key (a changed config) gets another folder."""
    return cache_root() / "staging" / hashlib.sha256(f"{uri}\n{key}".encode()).hexdigest()[:16]


def localize_dir(uri: str) -> str:
    """A local folder holding the files of folder `uri`: itself if local, else a cached download.

    Safe when several processes ask at once (the ranks of one SFT, workers on one machine): each version of the
    remote folder's contents gets its own folder, written once under a lock (the others wait, then use it) and
    never rewritten while in use; the previous version of the same URI is removed when a new one is written."""
    if is_local(uri):
        return str(uri).removeprefix("file://")
    fs, root = _fs(uri)
    files = {p: (i.get("size"), str(i.get("ETag") or i.get("LastModified") or i.get("mtime")))
             for p, i in fs.find(root, detail=True).items()}
    if not files:
        raise FileNotFoundError(f"no such folder: {uri}")
    source = json.dumps({"uri": str(uri), "files": files}, sort_keys=True, default=str)
    home = cache_root() / "remote" / hashlib.sha256(str(uri).encode()).hexdigest()[:16]
    dest = home / hashlib.sha256(source.encode()).hexdigest()[:16]
    if (dest / ".source.json").is_file():
        return str(dest)
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if not (dest / ".source.json").is_file():
            for stale in home.glob(".tmp-*"):  # left by a killed download (only the lock holder writes here)
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=home, prefix=".tmp-"))
            log.info("downloading %d files of %s to %s", len(files), uri, dest)
            try:
                for p in files:
                    target = tmp / p[len(root.rstrip("/")) + 1:]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _retry(lambda: fs.get_file(p, str(target)), f"download {p}")
                (tmp / ".source.json").write_text(source)
                os.replace(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for old in home.iterdir():  # earlier versions of this URI (and files of the old one-folder layout)
                if old != dest and not old.name.startswith("."):
                    shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return str(dest)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on `path` (created if missing), held for the block; released if the holder dies."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def upload_dir(local: str | Path, uri: str) -> str:
    """Copy a local folder's files under `uri` (each object written whole, with retries)."""
    local = Path(local)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        write_bytes(join(uri, *f.relative_to(local).parts), f.read_bytes())
    return str(uri)


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


def parquet_rows(uri: str) -> int:
    """Row count from the footer alone."""
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def unreadable(folder: str, skip: tuple[str, ...] = ("checkpoints",)) -> list[str]:
    """The artifacts under `folder` that do not open: Parquet files whose footer does not parse
    (half-written, truncated) and JSON files that are not JSON, each as `path (reason)`. Subfolders
    named in `skip` are left out (training checkpoints: resume picks the last complete one)."""
    fs, path = _fs(folder)
    if not fs.exists(path):
        return []
    bad = []
    for name in sorted(fs.find(path)):
        if not name.endswith((".parquet", ".json")) or any(f"/{d}/" in name for d in skip):
            continue
        try:
            with fs.open(name, "rb") as f:
                if name.endswith(".parquet"):
                    pq.ParquetFile(f).metadata  # noqa: B018 - reading the footer is the check
                else:
                    json.loads(f.read())
        except Exception as e:  # noqa: BLE001 - pyarrow and json raise many kinds; the reason is reported
            bad.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
    return bad


# What differs between two runs of the same config (README, "What is nondeterministic"): wall-clock
# fields and absolute paths live in these files, in training checkpoints and in search shards.
NONDETERMINISTIC_FILES = ("stage.json", "run.json", "manifest.json", "train_metrics.json", "summary.json",
                          "training_args.bin", "grpo_metrics.json", "study.json")
NONDETERMINISTIC_DIRS = ("checkpoints", "shards", "logs")  # logs/: a flow command's log file per run


def snapshot(run_dir: str | Path) -> dict[str, str]:
    """Content hashes of a local run's artifacts, relative path -> sha256, without the nondeterministic
    files above and the `seconds` column of Parquet tables: equal for two runs of the same config."""
    root = Path(run_dir)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or p.name in NONDETERMINISTIC_FILES or set(rel.parts) & set(NONDETERMINISTIC_DIRS):
            continue
        if p.suffix == ".parquet":
            table = pq.read_table(p)
            table = table.drop_columns([c for c in ("seconds",) if c in table.column_names])
            data = json.dumps(table.to_pylist(), sort_keys=True, default=str).encode()
        else:
            data = p.read_bytes()
        out[str(rel)] = hashlib.sha256(data).hexdigest()
    return out


def write_json(obj: Any, uri: str) -> str:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
    return str(uri)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def content_hash(uri: str) -> str:
    return hashlib.sha256(read_bytes(uri)).hexdigest()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a hash of the core's source, so any code change shows (read once per process)."""
    root = Path(sbt_core.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return f"{sbt_core.__version__}+{h.hexdigest()[:12]}"


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """Who wrote an artifact: the command line, the git commit of the checkout the code runs from (and whether
    it had uncommitted changes), the host, and the UTC time (once per process, the time of its first write)."""
    import datetime
    import platform
    import subprocess

    repo = Path(sbt_core.__file__).resolve().parent.parent
    commit = dirty = None
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            commit = head.stdout.strip()
            dirty = bool(run("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
            "git_commit": commit, "git_dirty": dirty, "host": platform.node(),
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def manifest_beside(data: str) -> dict:
    """The manifest of the stage that wrote `data` (a Parquet file or a folder), {} without one."""
    manifest = join(parent(data) if str(data).endswith(".parquet") else str(data), MANIFEST)
    return read_json(manifest) if exists(manifest) else {}


def write_manifest(out_dir: str, stage: str, config: dict, inputs: list[str], outputs: dict[str, str],
                   stats: dict | None = None) -> str:
    """The provenance record written beside a stage's outputs (outputs: name -> uri; stats: figures measured
    on them)."""
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
        "provenance": provenance(),
        "inputs": [_input_entry(u) for u in inputs if exists(u)],
        "outputs": files,
        **({"stats": stats} if stats else {}),
    }
    return write_json(manifest, join(out_dir, MANIFEST))


def _input_entry(uri: str) -> dict:
    """A file input carries its content hash; a folder input (a model) only its URI."""
    fs, path = _fs(uri)
    return {"uri": str(uri)} if fs.isdir(path) else {"uri": str(uri), "content_hash": content_hash(uri)}
