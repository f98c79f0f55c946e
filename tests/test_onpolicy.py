"""On-policy D_back: a trained model's own wrong steps after optimal prefixes become backtracking rows."""

from sbt_core import build_data, io, onpolicy
from sbt_core.config import BuildDataConfig, OnPolicyConfig
from sbt_core.domains import BACKTRACK, DOMAINS
from sbt_core.domains.base import split_response

COUNTDOWN = DOMAINS["countdown"]


def test_the_model_s_wrong_steps_become_backtrack_rows_after_optimal_prefixes(trained, data_dir, tmp_path):
    root, model, _ = trained
    base = build_data.run(BuildDataConfig(), str(data_dir / "train.parquet"), str(tmp_path / "base"))["sft"]
    cfg = OnPolicyConfig(source=model, problems=300, samples=4, temperature=1.0)
    out = onpolicy.run(cfg, model, str(data_dir / "train.parquet"), base, str(tmp_path / "op"))
    table, before = io.read_parquet(out["sft"]), io.read_parquet(base)
    stats = io.read_json(str(tmp_path / "op" / "manifest.json"))["stats"]
    assert stats["states"] == 300 and stats["samples"] == 1200 and stats["base_rows"] == len(before)
    added = table.slice(len(before)).to_pylist()
    assert len(added) == stats["rows"] > 0  # a 150-step model makes plenty of arithmetic slips
    assert table.slice(0, len(before)).equals(before)  # the base rows are kept as they were
    assert len(set(table["id"].to_pylist())) == len(table)
    problems = {p["id"]: p for p in io.read_parquet(str(data_dir / "train.parquet")).to_pylist()}
    for row in added:
        assert row["kind"] == "backtrack" and row["error_type"] in ("onpolicy_computation_error",
                                                                   "onpolicy_rule_violation")
        assert row["response"].endswith(f"\n{BACKTRACK}")
        lines = row["response"].split("\n")[:-1]
        prefix = lines[:-1]
        optimal, _, _ = split_response(COUNTDOWN.optimal(problems[row["problem_id"]]))
        assert prefix == optimal[: len(prefix)] and row["prefix_len"] == len(prefix)
        verdict = COUNTDOWN.verify(row, "\n".join(lines))
        assert verdict.step == len(prefix) and not verdict.correct
    # Same seed, same rows.
    again = onpolicy.run(cfg, model, str(data_dir / "train.parquet"), base, str(tmp_path / "op2"))
    assert io.read_parquet(again["sft"]).equals(table)


def test_a_harvest_fanned_out_to_other_processes_writes_the_rows_of_the_serial_one(trained, data_dir, tmp_path,
                                                                                   monkeypatch):
    """Its shards go out as JSON units to two worker processes, last first; the gathering process loads no model;
    the training set and the harvest's counts equal the serial run's; a rerun sends nothing."""
    import concurrent.futures
    import json
    import multiprocessing

    import pytest

    from sbt_core.search import run as search_run
    from sbt_core.search.common import run_packed

    _, model, _ = trained
    base = build_data.run(BuildDataConfig(), str(data_dir / "train.parquet"), str(tmp_path / "base"))["sft"]
    cfg = OnPolicyConfig(source=model, problems=300, samples=4, shard_size=120)
    train = str(data_dir / "train.parquet")
    serial = onpolicy.run(cfg, model, train, base, str(tmp_path / "serial"))
    sent = []

    def fan_out(units):
        sent.extend(units)
        calls = json.loads(json.dumps([[{"entry": u.entry, "kwargs": u.kwargs}] for u in reversed(units)]))
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(run_packed, calls))

    monkeypatch.setattr(search_run, "load", lambda *a, **k: pytest.fail("the gathering process loaded the model"))
    fanned = onpolicy.run(cfg, model, train, base, str(tmp_path / "fanned"), fan_out=fan_out)
    assert [u.name for u in sent] == ["shard-00000", "shard-00001", "shard-00002"]  # 120 + 120 + 60 problems
    assert io.read_parquet(fanned["sft"]).equals(io.read_parquet(serial["sft"]))
    stats = [io.read_json(str(tmp_path / d / "manifest.json"))["stats"] for d in ("serial", "fanned")]
    assert stats[0] == stats[1] and stats[0]["states"] == 300 and stats[0]["rows"] > 0
    sent.clear()
    onpolicy.run(cfg, model, train, base, str(tmp_path / "fanned"), fan_out=fan_out)
    assert sent == []
