"""The compute ladder: its config, its figures on hand-made evaluations, and `sbt ladder` end to end against the
session's real Prefect server (resumed after kill -9, extended by a rung)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from flows.cli import resolve_preset
from sbt_core import io, ladder
from sbt_core.reports import ladder as ladder_report
from sbt_core.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_the_cpu_ladder_config_builds_every_rung_from_the_tiny_preset():
    cfg = ladder.load_ladder_config(resolve_preset("ladder-cpu"), resolve=resolve_preset)
    assert len(cfg.rungs) >= 6
    sizes = {r.model.size for r in cfg.rungs.values()}
    assert sizes == {"1m", "3m"}
    assert {r.generate.num_numbers for r in cfg.rungs.values()} == {3, 4}
    one = cfg.rungs["1m-1800"]
    assert one.sft.max_steps == 1800 and one.eval.splits == ["val_new"] and one.grpo.models == []
    assert one.expert_iteration.rounds == 0 and one.name == "ladder-cpu-1m-1800"
    # A rung's own overrides win over the shared `set`; `--set` reaches both.
    cfg = ladder.load_ladder_config(resolve_preset("ladder-cpu"), ["set.eval.limit=40", "rungs.1m-900.sft.max_steps=7"],
                                    resolve=resolve_preset)
    assert cfg.rungs["1m-900"].sft.max_steps == 7 and cfg.rungs["3m-3000"].eval.limit == 40


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "ladder.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_bad_ladders_name_the_field(tmp_path):
    def load(tree):
        return ladder.load_ladder_config(_write(tmp_path, tree), resolve=resolve_preset)

    with pytest.raises(ConfigError, match=r"rungs\.a\.sft\.max_steps: Input should be a valid integer"):
        load({"base": "smoke", "rungs": {"a": {"sft.max_steps": "many"}}})
    with pytest.raises(ConfigError, match=r"rungs\.a\.model\.size"):
        load({"base": "smoke", "rungs": {"a": {"model": {"size": "1g"}}}})
    with pytest.raises(ConfigError, match="search: 'sbt_b1_n32' is not one of methods"):
        load({"base": "smoke", "methods": ["greedy"], "best_of": None, "rungs": {"a": {}}})
    with pytest.raises(ConfigError, match="rungs: a ladder needs at least one rung"):
        load({"base": "smoke", "rungs": {}})
    with pytest.raises(ConfigError, match="rungs.a/b: a rung name is"):
        load({"base": "smoke", "rungs": {"a/b": {}}})
    with pytest.raises(ConfigError, match="onpolicy.a.source: rung 'b' must come before 'a'"):
        load({"base": "smoke", "rungs": {"a": {}, "b": {}}, "onpolicy": {"a": {"source": "b"}}})
    with pytest.raises(ConfigError, match=r"onpolicy.z: not one of rungs"):
        load({"base": "smoke", "rungs": {"a": {}}, "onpolicy": {"z": {"source": "a"}}})
    with pytest.raises(ConfigError, match="no such config file"):
        load({"base": "no-such-preset", "rungs": {"a": {}}})


def _summary(n: int, greedy: float, search: float, ceiling: float, false: dict) -> dict:
    def m(acc, **extra):
        return {"val_new": {"problems": n, "accuracy_strict": acc, "any_candidate_correct_strict": extra.get("ceil", acc),
                            "selection_gap": extra.get("ceil", acc) - acc, "false_claim_rate": sum(false.values()) / n,
                            "false_claim_categories": false, "rolled_back_share": 0.1,
                            **({"selectors": {"logprob": acc, "majority": acc + 0.01}} if "ceil" in extra else {})}}

    return {"greedy": m(greedy), "best_of_n_32": m(greedy), "sbt_b1_n32": m(search, ceil=ceiling)}


def _results(tmp_path: Path, name: str, correct: list[bool]) -> str:
    uri = str(tmp_path / f"{name}.parquet")
    io.write_parquet(pa.table({"correct_strict": correct}), uri)
    return uri


def test_rows_carry_intervals_the_paired_gain_and_the_trend(tmp_path):
    cfg = ladder.load_ladder_config(resolve_preset("ladder-cpu"), resolve=resolve_preset)
    rows = []
    for i, (name, flops, g, s) in enumerate([("1m-900", 1e13, 10, 12), ("1m-1800", 2e13, 20, 28),
                                             ("1m-3600", 4e13, 30, 45)]):
        greedy = [k < g for k in range(100)]
        search = [k < s for k in range(100)]  # every problem greedy solves, the search solves too
        res = {"greedy": _results(tmp_path, f"g{i}", greedy), "sbt_b1_n32": _results(tmp_path, f"s{i}", search),
               "best_of_n_32": _results(tmp_path, f"g{i}", greedy)}
        metrics = {"train/steps": 900, "train/flops": flops, "train/seconds": 60.0, "train/parameters": 10**6}
        rows.append(ladder_report.rung_row(name, cfg.rungs[name], cfg, metrics,
                                    _summary(100, g / 100, s / 100, 0.9, {"computation_error": 3, "not_reached": 1}),
                                    res))
    r = rows[-1]
    assert r["gain"] == pytest.approx(0.15)
    lo, hi = r["gain_interval"]
    assert 0 < lo < 0.15 < hi < 0.25  # paired: only the 15 problems that differ vary
    assert r["interval"]["greedy"][0] < 0.30 < r["interval"]["greedy"][1]
    assert r["computation_share"] == pytest.approx(0.75) and r["false_claim_rate"] == pytest.approx(0.04)
    assert r["selection_gap"] == pytest.approx(0.45)
    assert ladder_report.first_reaching(rows)["rung"] == "1m-3600"
    t = ladder_report.trend(rows)  # gains 2, 8, 15 points against log10 FLOPs 13, 13.3, 13.6
    assert t["slope_per_decade"] == pytest.approx(0.216, abs=0.01)
    assert t["flops_for"]["+10"] < t["flops_for"]["+40"]
    md = ladder_report.markdown(rows, cfg)
    assert "| 1m-3600 | 1m | 3 | 900 | 4.00e+13 |" in md and "+15.0 [" in md
    assert "Smallest training compute with gain ≥ +10 points: rung `1m-3600`" in md
    assert "majority answer" in md and "ceiling" in md
    flat = [dict(r, gain=0.0) for r in rows]
    assert ladder_report.first_reaching(flat) is None
    assert "No rung reaches +10 points" in ladder_report.markdown(flat, cfg)
    assert ladder_report.trend(flat)["flops_for"]["+10"] is None
    same = [dict(r, train_flops=2.79e13 * (1 + 1e-9 * i)) for i, r in enumerate(rows)]  # an equal-FLOPs comparison
    assert ladder_report.trend(same) is None and "Trend over" not in ladder_report.markdown(same, cfg)


TINY = {
    "name": "ladder-test",
    "base": "smoke",
    "set": {"sft.max_steps": 30, "sft.save_steps": 5, "sft.logging_steps": 5, "eval.limit": 6, "grpo.models": [],
            "expert_iteration.rounds": 0, "eval.splits": ["val_new"]},
    "rungs": {"a": {"sft.max_steps": 10}, "b": {}},
}


def _ladder(api: str, config: Path, run_dir: Path, **kw):
    cmd = [sys.executable, "-m", "flows.cli", "ladder", "-c", str(config), "--run-dir", str(run_dir)]
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.integration
def test_the_ladder_resumes_after_kill_9_and_a_new_rung_trains_only_itself(prefect_server, tmp_path):
    config, run_dir = _write(tmp_path, TINY), tmp_path / "run"
    proc = _ladder(prefect_server, config, run_dir)
    deadline = time.time() + 300
    while not list((run_dir / "b" / "sft" / "checkpoints").glob("checkpoint-*")) and proc.poll() is None:
        assert time.time() < deadline, "rung b never reached a checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / "a" / "eval" / "stage.json").exists() and not (run_dir / "ladder.md").exists()

    out, _ = _ladder(prefect_server, config, run_dir).communicate(timeout=600)
    assert "ladder:" in out, out[-3000:]
    assert "a-sft: cached" in out and "a-evaluate: cached" in out
    assert "b-sft: resuming an unfinished attempt" in out
    rows = io.read_json(str(run_dir / "ladder.json"))["rungs"]
    assert [r["rung"] for r in rows] == ["a", "b"] and [r["steps"] for r in rows] == [10, 30]
    assert rows[1]["train_flops"] == pytest.approx(3 * rows[0]["train_flops"], rel=0.02)
    assert (run_dir / "ladder.png").read_bytes()[:4] == b"\x89PNG"
    md = (run_dir / "ladder.md").read_text()
    assert "| a | 1m | 4 | 10 |" in md and "## Selectors" in md  # smoke: 4 numbers

    # A third rung on the same data, a lever: rung b's own wrong steps added to its data. Only its harvest, SFT
    # and evaluation run, then the report.
    config = _write(tmp_path, {**TINY, "rungs": {**TINY["rungs"], "c": {"sft.max_steps": 15}},
                               "onpolicy": {"c": {"source": "b", "problems": 100, "samples": 2}}})
    out, _ = _ladder(prefect_server, config, run_dir).communicate(timeout=600)
    assert "ran 4 stages" in out, out[-3000:]
    rows = io.read_json(str(run_dir / "ladder.json"))["rungs"]
    assert [r["rung"] for r in rows] == ["a", "b", "c"] and rows[2]["lever"] == "on-policy D_back from b"
    manifest = io.read_json(str(run_dir / "c" / "onpolicy" / "manifest.json"))
    assert manifest["stats"]["states"] == 100 and manifest["stats"]["samples"] == 200
