"""The newcomer's path, in process: files others can read, presets beside run folders, mapping typos, generators
that stop, truncation counted (the CLI's one-line errors are in test_cli.py)."""

from __future__ import annotations

import os
import stat

import pytest

from sbt_core import io
from sbt_core.config import ConfigError, load_run_config, load_study_config


def test_written_files_follow_the_umask_as_open_does(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_json({"a": 1}, str(tmp_path / "x.json"))
        with open(tmp_path / "y", "w"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == stat.S_IMODE((tmp_path / "y").stat().st_mode) == 0o644


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    from flows.cli import PRESETS, resolve_preset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()
    assert resolve_preset("smoke") == PRESETS / "smoke.yaml"
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    assert resolve_preset("mine.yaml").name == "mine.yaml"
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder, not a config file"):
        resolve_preset("runs")


def test_a_typo_in_a_mapping_key_fails_and_a_plus_adds_an_entry():
    from flows.cli import PRESETS

    with pytest.raises(ConfigError, match=r"models has no entry 'dfs' \(it has: sft, bt\)"):
        load_run_config(PRESETS / "smoke.yaml", ["models.dfs.recipe=dfs_trace"])
    cfg = load_run_config(PRESETS / "smoke.yaml", ["models.+dfs.recipe=dfs_trace", "models.bt.methods=[greedy]"])
    assert cfg.models["dfs"].recipe == "dfs_trace" and cfg.models["bt"].methods == ["greedy"]
    # A section the YAML leaves out still knows its entries (the field's default).
    with pytest.raises(ConfigError, match="error_type_ratios has no entry 'x'"):
        load_run_config(PRESETS / "smoke.yaml", ["ablations.error_type_ratios.x=[1,1,1]"])
    assert "x" in load_run_config(PRESETS / "smoke.yaml", ["ablations.error_type_ratios.+x=[1,1,1]"]).ablations.error_type_ratios
    with pytest.raises(ConfigError, match="domains has no entry 'nosuch'"):
        load_study_config(PRESETS / "smoke-study.yaml", ["domains.nosuch.sft.max_steps=1"])
    assert load_study_config(PRESETS / "smoke-study.yaml", ["domains.countdown.sft.max_steps=3"]).domains[
        "countdown"].sft.max_steps == 3


def test_the_generator_refuses_targets_nothing_reaches_instead_of_spinning():
    from sbt_core.domains.countdown import generate
    from sbt_core.domains.countdown.config import GenerateConfig, largest_value

    assert [largest_value(k, 2) for k in (1, 2, 3, 4)] == [2, 4, 8, 16] and largest_value(3, 1) == 3
    with pytest.raises(ValueError, match="no target is reachable"):
        GenerateConfig(num_numbers=3, number_max=2)
    # Reachable in bound but not by any draw: 97, 98 and 99 need more than two numbers up to 10.
    cfg = GenerateConfig(num_numbers=2, number_max=10, target_min=97, target_max=100, held_out_fraction=0,
                         num_train=8, num_val_seen=0, num_val_new=0, workers=1)
    with pytest.raises(ValueError, match=r"no solvable problem found for target\(s\) \[97, 98, 99\]"):
        generate.generate(cfg)


def test_manifests_record_the_command_the_commit_and_the_time(tmp_path):
    io.write_json({"x": 1}, str(tmp_path / "x.json"))
    record = io.read_json(io.write_manifest(str(tmp_path), "test", {}, [], {"x": str(tmp_path / "x.json")}))
    prov = record["provenance"]
    assert prov["command"] and prov["started_utc"].endswith("+00:00") and prov["host"]
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40


def test_a_run_yaml_without_a_name_is_named_after_its_file(tmp_path):
    from sbt_core.ladder import load_ladder_config

    (tmp_path / "my-run.yaml").write_text("sft: {max_steps: 3}\n")
    assert load_run_config(tmp_path / "my-run.yaml").name == "my-run"
    (tmp_path / "named.yaml").write_text("name: kept\n")
    assert load_run_config(tmp_path / "named.yaml").name == "kept"
    (tmp_path / "my-study.yaml").write_text("domains: {countdown: {sft: {max_steps: 3}}}\n")
    assert load_study_config(tmp_path / "my-study.yaml").name == "my-study"
    (tmp_path / "my-ladder.yaml").write_text("rungs: {a: {sft.max_steps: 3}}\n")
    assert load_ladder_config(tmp_path / "my-ladder.yaml").name == "my-ladder"


def test_an_evaluation_summary_says_how_many_problems_each_split_had():
    from sbt_core.evaluate import markdown_table

    row = {"accuracy_strict": 0.5, "accuracy_paper": 0.5, "false_claim_rate": 0.0, "tokens_per_problem": 9.0}
    md = markdown_table({"greedy": {"val_seen": {**row, "problems": 40}, "val_new": {**row, "problems": 38}}},
                        ("val_seen", "val_new"))
    assert md.splitlines()[0] == "Problems: val_seen 40, val_new 38."


def test_library_chatter_goes_to_the_log_file_not_the_terminal(tmp_path):
    import logging

    from sbt_core import chatter

    terminal = logging.StreamHandler(open(tmp_path / "terminal", "w"))
    logging.getLogger().addHandler(terminal)
    try:
        chatter.quiet_libraries(str(tmp_path / "logs" / "run.log"))
        logging.getLogger("transformers.chatter_test").warning("library chatter")  # (Python warnings: pytest
        # records those itself; test_interrupt checks that none reach the terminal of a real run)
        logging.getLogger("sbt_core.search.run").warning("our own warning")
        logging.getLogger("trl.chatter_test").error("a library's error")
        terminal.flush()
        shown = (tmp_path / "terminal").read_text()
        logged = (tmp_path / "logs" / "run.log").read_text()
        assert "our own warning" in shown and "a library's error" in shown
        assert "library chatter" not in shown
        assert all(m in logged for m in ("library chatter", "our own warning", "a library's error"))
    finally:
        logging.getLogger().removeHandler(terminal)
        for h in [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]:
            logging.getLogger().removeHandler(h)
        logging.captureWarnings(False)
