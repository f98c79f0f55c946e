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


def run(results_uri: str, out_dir: str, *, domain: str = domains.DEFAULT, transductive: bool = False) -> dict[str, str]:
    """Stage entry: write `sft.parquet` of verified outputs; refuses eval splits unless transductive."""
    split = source_split(results_uri)
    if split != "train" and not transductive:
        raise ValueError(
            f"the search read split {split!r}, not 'train': self-training on an evaluation split is "
            "transductive; pass transductive=True (--transductive) to do it anyway"
        )
    table = distill(io.read_parquet(results_uri), domains.get(domain))
    uri = io.write_parquet(table, io.join(out_dir, "sft.parquet"))
    io.write_manifest(out_dir, "distill", {"domain": domain, "transductive": transductive, "split": split}, [results_uri], {"sft": uri})
    log.info("distill: kept %d verified outputs", len(table))
    return {"sft": uri}
