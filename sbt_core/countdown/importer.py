"""Import the paper's released dataset (yangxw/countdown-backtracking) into our schema.

Input rows (JSON list or JSONL): `nums` (list of int), `target` (int), `search_path` (str),
`is_find` (bool), `is_backtrack` (bool). Output: SFT rows in build_data's schema, and the
problems (from `is_find` rows) in generate's schema. Malformed rows fail with the row number
and the field.
"""

from __future__ import annotations

import json

import pyarrow as pa

from sbt_core import io
from sbt_core.countdown.format import BACKTRACK, GOAL

FIELDS = {"nums": list, "target": int, "search_path": str, "is_find": bool, "is_backtrack": bool}


class DatasetFormatError(ValueError):
    """A malformed input row."""


def _rows(text: str) -> list:
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"not valid JSON: {e}") from None
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetFormatError(f"row {i}: not valid JSON: {e.msg}") from None
    return rows


def _check(i: int, row) -> None:
    if not isinstance(row, dict):
        raise DatasetFormatError(f"row {i}: expected an object, got {type(row).__name__}")
    for field, kind in FIELDS.items():
        if field not in row:
            raise DatasetFormatError(f"row {i}: field '{field}' is missing")
        v = row[field]
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        if field == "nums":
            ok = ok and bool(v) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v)
        if not ok:
            raise DatasetFormatError(f"row {i}: field '{field}' must be {'a non-empty list of non-negative integers' if field == 'nums' else kind.__name__}, got {v!r}")
    if row["is_find"] == row["is_backtrack"]:
        raise DatasetFormatError(f"row {i}: exactly one of 'is_find' and 'is_backtrack' must be true")
    end = GOAL if row["is_find"] else BACKTRACK
    if not row["search_path"].rstrip().endswith(end):
        raise DatasetFormatError(f"row {i}: field 'search_path' must end with {end!r}")


def import_rows(text: str) -> tuple[pa.Table, pa.Table]:
    """(sft rows, problems) from the released file's text."""
    rows = _rows(text)
    for i, row in enumerate(rows, start=1):
        _check(i, row)
    sft = pa.table(
        {
            "id": pa.array(range(len(rows)), pa.int64()),
            "problem_id": pa.array([-1] * len(rows), pa.int64()),
            "nums": pa.array([r["nums"] for r in rows], pa.list_(pa.int64())),
            "target": pa.array([r["target"] for r in rows], pa.int64()),
            "response": pa.array([r["search_path"].rstrip() for r in rows], pa.string()),
            "kind": pa.array(["optimal" if r["is_find"] else "backtrack" for r in rows], pa.string()),
            "error_type": pa.array([None] * len(rows), pa.string()),
            "prefix_len": pa.array([r["search_path"].rstrip().count("\n") - (0 if r["is_find"] else 1) for r in rows], pa.int64()),
        }
    )
    found = [r for r in rows if r["is_find"]]
    problems = pa.table(
        {
            "id": pa.array(range(len(found)), pa.int64()),
            "nums": pa.array([r["nums"] for r in found], pa.list_(pa.int64())),
            "target": pa.array([r["target"] for r in found], pa.int64()),
            "solution": pa.array([r["search_path"].rstrip() for r in found], pa.string()),
        }
    )
    return sft, problems


def run(src_uri: str, out_dir: str) -> dict[str, str]:
    """Stage entry: write `sft.parquet` and `problems.parquet` from a released JSON/JSONL file."""
    sft, problems = import_rows(io.read_bytes(src_uri).decode("utf-8"))
    uris = {
        "sft": io.write_parquet(sft, io.join(out_dir, "sft.parquet")),
        "problems": io.write_parquet(problems, io.join(out_dir, "problems.parquet")),
    }
    io.write_manifest(out_dir, "import_dataset", {"source": str(src_uri)}, [src_uri], uris)
    return uris
