"""Import the paper's released dataset (yangxw/countdown-backtracking) into our schema.

Loaded through Hugging Face `datasets`, the way its users hold it: a local file (Parquet,
JSON, JSONL, CSV), a local folder (the repository's files, or `save_to_disk` output), or the
dataset's name resolved from the local Hugging Face cache with the hub offline.

Input rows: `nums` (a list of int; a string like "[1, 2, 3]" in CSV), `target` (int) and
`search_path` (str), the three columns the official training code reads; `is_find` and
`is_backtrack` (bool) when present. Without the flags a row's kind follows from how its
`search_path` ends (`Goal Reached!`: optimal, `<backtrack>`: backtracking); with them, the flags
are kept and must agree with that ending. Output: SFT rows in build_data's schema, and the
problems (from optimal rows) in generate's schema. Malformed rows fail with the row number and
the field.

Run: `sbt import-dataset --src yangxw/countdown-backtracking --out data/released`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from sbt_core import io
from sbt_core.domains.countdown.format import BACKTRACK, GOAL, format_prompt

REQUIRED = ("nums", "target", "search_path")
FLAGS = ("is_find", "is_backtrack")
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


class DatasetFormatError(ValueError):
    """A malformed input row or an unreadable source."""


def _why(e: BaseException) -> str:
    """`Type: first line` of an error's root cause (`datasets` wraps the parser's error in a message-less one)."""
    while (e.__cause__ or e.__context__) is not None and not str(e).strip().splitlines()[1:] and (
            type(e).__name__ == "DatasetGenerationError" or not str(e).strip()):
        e = e.__cause__ or e.__context__
    lines = [line for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def load(source: str, split: str = "train"):
    """The released rows of `split` as a `datasets.Dataset` (see the module docstring for sources)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # names resolve from the local cache only (read at import)
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its errors come back as ours, once
    path = Path(source)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise DatasetFormatError(f"{source}: the file is empty")
        if path.is_file():
            builder = BUILDERS.get("".join(path.suffixes[-1:]).lower())
            if builder is None:
                raise DatasetFormatError(f"{source}: not a Parquet, JSON, JSONL or CSV file")
            return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            saved = datasets.load_from_disk(str(path))
            return saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split)
        # A hub name, from the local caches only (no network here or on most GPU workers): a copy
        # `load_dataset` prepared before, else the repository's files in the hub cache.
        try:
            return datasets.load_dataset(source, split=split)
        except Exception as e:  # noqa: BLE001 - not prepared before: look for the downloaded files
            from huggingface_hub import snapshot_download

            try:
                folder = snapshot_download(source, repo_type="dataset", local_files_only=True)
            except Exception:  # noqa: BLE001
                raise DatasetFormatError(f"{source}: not a local file or folder, and not in the local Hugging Face "
                                         f"cache ({_why(e)[:200]})") from None
            return datasets.load_dataset(folder, split=split)
    except DatasetFormatError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError) as e:  # datasets' own messages name the cause
        if "corresponds to no data" in str(e):  # a header and no rows
            raise DatasetFormatError(f"{source}: no rows") from None
        raise DatasetFormatError(f"{source} (split {split!r}): {e}") from None
    except Exception as e:  # noqa: BLE001 - pyarrow/json parse errors: one line, not a traceback
        raise DatasetFormatError(f"{source}: cannot read it: {_why(e)}") from None


def _nums(i: int, v) -> list[int]:
    if isinstance(v, str):  # CSV keeps the list as text, as the hub's viewer shows it
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            raise DatasetFormatError(f"row {i}: field 'nums' must be a list of integers, got {v!r}") from None
    ok = isinstance(v, list) and bool(v) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v)
    if not ok:
        raise DatasetFormatError(f"row {i}: field 'nums' must be a non-empty list of non-negative integers, got {v!r}")
    return v


def _kind(i: int, row: dict, flagged: bool) -> str:
    """optimal or backtrack: from the flags when the dataset has them, else from how the path ends."""
    path = row["search_path"]
    if not isinstance(path, str):
        raise DatasetFormatError(f"row {i}: field 'search_path' must be str, got {path!r}")
    ends = "optimal" if path.rstrip().endswith(GOAL) else "backtrack" if path.rstrip().endswith(BACKTRACK) else None
    if not flagged:
        if ends is None:
            raise DatasetFormatError(f"row {i}: field 'search_path' must end with {GOAL!r} or {BACKTRACK!r}")
        return ends
    find, back = row["is_find"], row["is_backtrack"]
    if not (isinstance(find, bool) and isinstance(back, bool)) or find == back:
        raise DatasetFormatError(f"row {i}: exactly one of 'is_find' and 'is_backtrack' must be true")
    kind = "optimal" if find else "backtrack"
    if ends != kind:
        raise DatasetFormatError(f"row {i}: field 'search_path' must end with {GOAL if find else BACKTRACK!r}")
    return kind


def convert(rows) -> tuple[pa.Table, pa.Table]:
    """(sft rows, problems) from the released rows (a `datasets.Dataset` or a list of dicts)."""
    columns = set(rows.column_names if hasattr(rows, "column_names") else (rows[0] if rows else {}))
    for field in REQUIRED:
        if field not in columns:
            raise DatasetFormatError(f"row 1: field '{field}' is missing (columns: {sorted(columns)})")
    flagged = all(f in columns for f in FLAGS)
    nums, targets, paths, kinds = [], [], [], []
    for i, row in enumerate(rows, start=1):
        for field in REQUIRED:
            if row.get(field) is None:  # a column some rows lack reads as None through `datasets`
                raise DatasetFormatError(f"row {i}: field '{field}' is missing")
        target = row["target"]
        if not isinstance(target, int) or isinstance(target, bool):
            raise DatasetFormatError(f"row {i}: field 'target' must be int, got {target!r}")
        kinds.append(_kind(i, row, flagged))
        nums.append(_nums(i, row["nums"]))
        targets.append(target)
        paths.append(row["search_path"].rstrip())
    sft = pa.table({
        "id": pa.array(range(len(paths)), pa.int64()),
        "problem_id": pa.array([-1] * len(paths), pa.int64()),
        "nums": pa.array(nums, pa.list_(pa.int64())),
        "target": pa.array(targets, pa.int64()),
        "prompt": pa.array([format_prompt(n, t) for n, t in zip(nums, targets)], pa.string()),
        "response": pa.array(paths, pa.string()),
        "kind": pa.array(kinds, pa.string()),
        "error_type": pa.array([None] * len(paths), pa.string()),
        "prefix_len": pa.array([p.count("\n") - (k == "backtrack") for p, k in zip(paths, kinds)], pa.int64()),
    })
    found = [i for i, k in enumerate(kinds) if k == "optimal"]
    problems = pa.table({
        "id": pa.array(range(len(found)), pa.int64()),
        "nums": pa.array([nums[i] for i in found], pa.list_(pa.int64())),
        "target": pa.array([targets[i] for i in found], pa.int64()),
        "solution": pa.array([paths[i] for i in found], pa.string()),
    })
    return sft, problems


def sft_dataset(source: str, split: str = "train"):
    """The released rows as SFT rows for `train` (a `datasets.Dataset`): `search_path` read as `response`,
    plus the `prompt` each row's numbers and target give."""
    rows = load(source, split)
    if "response" not in rows.column_names and "search_path" in rows.column_names:
        rows = rows.rename_column("search_path", "response")
    return rows.map(lambda b, idx: {"prompt": [format_prompt(_nums(i + 1, n), t)
                                               for i, n, t in zip(idx, b["nums"], b["target"])]},
                    batched=True, with_indices=True, desc="prompts")


def run(source: str, out_dir: str, split: str = "train") -> dict[str, str]:
    """Stage entry: write `sft.parquet` and `problems.parquet` from the released dataset."""
    rows = load(source, split)
    sft, problems = convert(rows)
    uris = {
        "sft": io.write_parquet(sft, io.join(out_dir, "sft.parquet")),
        "problems": io.write_parquet(problems, io.join(out_dir, "problems.parquet")),
    }
    io.write_manifest(out_dir, "import_dataset",
                      {"source": str(source), "split": split, "fingerprint": rows._fingerprint,
                       "kind_from": "flags" if all(f in rows.column_names for f in FLAGS) else "search_path ending"},
                      [source], uris)
    return uris
