"""Expert-iteration data: verified-correct search outputs become a new SFT set.

Each kept row is the problem, its prompt, and the output cut after its goal line (`Domain.final`;
rolled-back text never appears in a search's final output). Rows come from the **train** split by
default; taking them from an evaluation split is self-training on the test set, which the
paper's `train_self_improvement.py` does, and needs `transductive=True`.

Run: `sbt distill-data --results runs/search-train/results.parquet --out runs/ei1-data`.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from sbt_core import domains, io
from sbt_core.domains import Domain

log = logging.getLogger(__name__)


def source_split(results_uri: str) -> str:
    """The split a search read, from the manifest beside its results."""
    manifest_uri = io.join(io.parent(results_uri), io.MANIFEST)
    if not io.exists(manifest_uri):
        raise ValueError(f"no manifest beside {results_uri}: cannot tell which split it searched")
    inputs = io.read_json(manifest_uri).get("inputs", [])
    if not inputs:
        raise ValueError(f"{manifest_uri} names no input split")
    return io.basename(inputs[0]["uri"]).removesuffix(".parquet")


def distill(results: pa.Table, domain: Domain) -> pa.Table:
    """SFT rows (the schema of build_data) from strictly verified outputs."""
    keep = results.filter(results["correct_strict"])
    problems = keep.select(list(domain.columns)).to_pylist()
    responses = [domain.final(r) for r in keep["output"].to_pylist()]
    return pa.table(
        {
            "id": pa.array(range(len(keep)), pa.int64()),
            "problem_id": keep["id"],
            **{c: keep[c] for c in domain.columns},
            "prompt": pa.array([domain.prompt(p) for p in problems], pa.string()),
            "response": pa.array(responses, pa.string()),
            "kind": pa.array(["optimal"] * len(keep), pa.string()),
            "error_type": pa.array([None] * len(keep), pa.string()),
            "prefix_len": pa.array([r.count("\n") for r in responses], pa.int64()),
        }
    )


def with_replay(table: pa.Table, old: pa.Table, per_row: float, seed: int) -> pa.Table:
    """`table` followed by round(per_row * len(table)) rows of `old` (at most all of them) drawn at random without
    replacement, in their order in `old`, in `table`'s schema, ids renumbered."""
    import numpy as np

    k = min(len(old), round(per_row * len(table)))
    if k == 0:
        return table
    picked = np.sort(np.random.default_rng([seed, 11]).choice(len(old), size=k, replace=False))
    rows = old.take(pa.array(picked)).select(table.column_names).cast(table.schema)
    both = pa.concat_tables([table, rows])
    return both.set_column(both.schema.get_field_index("id"), "id", pa.array(range(len(both)), pa.int64()))


def run(results_uri: str, out_dir: str, *, domain: str = domains.DEFAULT, transductive: bool = False,
        replay_uri: str | None = None, replay: float = 0.0, seed: int = 0) -> dict[str, str]:
    """Stage entry: write `sft.parquet` of verified outputs, followed by `replay` rows of `replay_uri` (an SFT set)
    per output (`with_replay`, seeded by `seed`); refuses eval splits unless transductive."""
    split = source_split(results_uri)
    if split != "train" and not transductive:
        raise ValueError(
            f"the search read split {split!r}, not 'train': self-training on an evaluation split is "
            "transductive; pass transductive=True (--transductive) to do it anyway"
        )
    if replay and replay_uri is None:
        raise ValueError(f"replay={replay} needs the training set to replay (replay_uri)")
    table = distill(io.read_parquet(results_uri), domains.get(domain))
    kept = len(table)
    if replay:
        table = with_replay(table, io.read_parquet(replay_uri), replay, seed)
    uri = io.write_parquet(table, io.join(out_dir, "sft.parquet"))
    config = {"domain": domain, "transductive": transductive, "split": split, "replay": replay, "seed": seed}
    io.write_manifest(out_dir, "distill", config, [results_uri, *([replay_uri] if replay else [])], {"sft": uri},
                      {"distilled": kept, "replayed": len(table) - kept})
    log.info("distill: kept %d verified outputs, %d replayed rows", kept, len(table) - kept)
    return {"sft": uri}
