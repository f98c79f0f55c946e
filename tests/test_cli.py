"""The `sbt` command line end to end, its contract, and its clean failures."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from sbt_core import io

ROOT = Path(__file__).resolve().parent.parent


def sbt(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.integration
def test_every_stage_from_the_command_line(tmp_path):
    data, sft, run = tmp_path / "data", tmp_path / "sft", tmp_path / "run"
    sbt("generate", "--out", data, "--num-train", 400, "--num-val-seen", 8, "--num-val-new", 8, "--seed", 3)
    for split in ("train", "val_seen", "val_new"):
        t = io.read_parquet(str(data / f"{split}.parquet"))
        assert {"nums", "target", "solution"} <= set(t.column_names)
    assert json.loads((data / "manifest.json").read_text())["outputs"]["train"]["rows"] == 400
    sbt("build-data", "--data", data, "--out", sft)
    (tmp_path / "train.yaml").write_text("max_steps: 4\nbatch_size: 8\nlearning_rate: 0.5\n")
    sbt("train", "--data", sft / "sft.parquet", "--out", run, "--config", tmp_path / "train.yaml", "--lr", 1e-3,
        "--set", "context_length=96")
    # The file, then the command's flags, then --set: every TrainConfig field reachable, none re-typed.
    train_cfg = json.loads((run / "manifest.json").read_text())["config"]["train"]
    assert (train_cfg["max_steps"], train_cfg["learning_rate"], train_cfg["context_length"]) == (4, 1e-3, 96)
    model = run / "model"
    sbt("search", "--model", model, "--data", data / "train.parquet", "--out", tmp_path / "s", "--n", 2, "--b", 1,
        "--limit", 6, "--max-new-tokens", 24)
    assert len(io.read_parquet(str(tmp_path / "s" / "results.parquet"))) == 6
    out = sbt("evaluate", "--model", model, "--data", data, "--out", tmp_path / "eval", "--methods",
              "greedy,sbt_b1_n8", "--limit", 4, "--max-new-tokens", 24).stdout
    assert "| sbt_b1_n8 |" in out
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["greedy"]["val_new"]) >= {"accuracy_strict", "accuracy_paper", "false_claim_rate", "tokens_per_problem"}
    sbt("distill-data", "--results", tmp_path / "s" / "results.parquet", "--out", tmp_path / "ei")
    assert (tmp_path / "ei" / "sft.parquet").exists()
    # Self-training on an evaluation split needs the explicit flag.
    refused = sbt("distill-data", "--results", tmp_path / "eval" / "greedy" / "val_new" / "results.parquet",
                  "--out", tmp_path / "ei2", ok=False)
    assert refused.returncode == 2 and "transductive" in refused.stderr and "Traceback" not in refused.stderr
    sbt("distill-data", "--results", tmp_path / "eval" / "greedy" / "val_new" / "results.parquet",
        "--out", tmp_path / "ei2", "--transductive")


@pytest.mark.integration
def test_sudoku_lengths_come_from_the_data_through_the_stage_commands(tmp_path):
    """9x9 traces are ~300 tokens: `sbt train` takes its context from build-data's manifest and `sbt search` /
    `sbt evaluate` their token limit from the model's training (the defaults, 128 and 64, cut every answer)."""
    data, sft, run = tmp_path / "data", tmp_path / "sft", tmp_path / "run"
    sbt("generate", "--domain", "sudoku", "--out", data, "--num-train", 24, "--num-val", 2, "--seed", 1)
    sbt("build-data", "--data", data, "--out", sft)  # the domain from the data's manifest
    longest_row = json.loads((sft / "manifest.json").read_text())["stats"]["token_lengths"]["all"]["max"]
    trained = sbt("train", "--data", sft / "sft.parquet", "--out", run, "--max-steps", 2, "--batch-size", 4)
    assert f"context_length: {longest_row} (the data's longest row" in " ".join(trained.stderr.split())
    metrics = json.loads((run / "train_metrics.json").read_text())
    longest = metrics["train/longest_response"]
    assert metrics["train/rows_cut"] == 0 and 64 < longest < longest_row
    searched = sbt("search", "--model", run / "model", "--data", data / "val.parquet", "--out", tmp_path / "s",
                   "--decoder", "greedy", "--limit", 1)
    assert f"max_new_tokens: {longest} (the longest response" in " ".join(searched.stderr.split())
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["config"]["search"]["max_new_tokens"] == longest
    shown = sbt("evaluate", "--model", run / "model", "--data", data, "--out", tmp_path / "e", "--methods", "greedy",
                "--limit", 1, "--max-new-tokens", 8)  # given: it stands, and the cut answer is warned about
    assert "max_new_tokens: " not in shown.stderr and "stopped at max_new_tokens=8" in " ".join(shown.stderr.split())
    assert shown.stdout.startswith("Problems: val 1.")


@pytest.mark.integration  # a subprocess per case
@pytest.mark.parametrize(
    "args,message",
    [
        (["generate", "--out", "X", "--num-train", "0"], "num_train"),
        (["build-data", "--data", "missing.parquet", "--out", "X"], "no such artifact"),
        (["build-data", "--data", "P.parquet", "--out", "X", "--recipe", "nosuch"], "unknown recipe 'nosuch'"),
        (["build-data", "--data", "missing.parquet", "--out", "X", "--error-ratio", "1:2"], "error_type_ratio.2: Field required"),
        (["search", "--model", "nowhere", "--data", "missing.parquet", "--out", "X"], "no such artifact"),
        (["train", "--data", "missing.parquet", "--out", "X", "--lr", "-1"], "learning_rate"),
        # Every field of the stage's config can be set, and a typo is an error that names it.
        (["train", "--data", "missing.parquet", "--out", "X", "--set", "context_lenght=64"], "context_lenght: Extra"),
        (["search", "--model", "m", "--data", "missing.parquet", "--out", "X", "--set", "decoder=nosuch"], "decoder:"),
        (["generate", "--out", "X", "--num-val", "5"], "--num-val: not an option of the countdown generator"),
        (["generate", "--out", "X", "--domain", "sudoku", "--num-numbers", "3"], "--num-numbers: not an option"),
        # Zero or negative problems: refused, not a 0.0% report.
        (["evaluate", "--model", "m", "--data", "D", "--out", "X", "--limit", "0"], "limit: Input should be greater"),
        (["search", "--model", "m", "--data", "P.parquet", "--out", "X", "--limit", "-1"], "greater than or equal to 1"),
        (["import-dataset", "--src", "BAD.jsonl", "--out", "X"], "row 1: field 'search_path' is missing"),
        (["import-dataset", "--src", "BAD", "--out", "X"], "not a Parquet, JSON, JSONL or CSV file"),
        (["import-dataset", "--src", "nobody/no-such-dataset", "--out", "X"], "not in the local Hugging Face cache"),
        (["import-dataset", "--src", "EMPTY.jsonl", "--out", "X"], "EMPTY.jsonl: the file is empty"),
        (["import-dataset", "--src", "EMPTY.csv", "--out", "X"], "EMPTY.csv: the file is empty"),
        (["import-dataset", "--src", "HEADER.csv", "--out", "X"], "HEADER.csv: no rows"),
        (["import-dataset", "--src", "GARBAGE.jsonl", "--out", "X"], "GARBAGE.jsonl: cannot read it: ArrowInvalid"),
        # A file where an output folder belongs: one line, before any work (or any Prefect server).
        (["generate", "--out", "FILE", "--num-train", "10"], "FILE is a file, not a folder"),
        (["generate", "--out", "FILE/sub", "--num-train", "10"], "FILE is a file, not a folder"),
        (["run", "-c", "smoke", "--run-dir", "FILE"], "FILE is a file, not a folder"),
        # No reachable target: refused at validation, not an endless search.
        (["generate", "--out", "X", "--num-numbers", "3", "--number-max", "2"], "no target is reachable: 3 numbers"),
        # A stage's folder given as the model.
        (["search", "--model", "STAGE", "--data", "P.parquet", "--out", "X"], "STAGE is a stage's folder"),
        # The data's manifest names its domain; a contradicting --domain is refused.
        (["build-data", "--data", "SUDOKU", "--out", "X", "--domain", "countdown"], "holds sudoku data"),
        # A typo in a key of a mapping fails like any other typo; a new entry takes a leading +.
        (["study", "-c", "smoke-study", "--set", "domains.nosuch.sft.max_steps=1", "--dry-run"],
         "domains has no entry 'nosuch'"),
        (["ladder", "--set", "rungs.1m-180.sft.max_steps=3", "--dry-run"], "rungs has no entry '1m-180'"),
        (["run", "-c", "smoke", "--set", "models.dfs.recipe=dfs_trace", "--dry-run"], "models has no entry 'dfs'"),
    ],
)
def test_bad_input_fails_with_a_message_not_a_traceback(tmp_path, args, message):
    for name in ("BAD", "BAD.jsonl"):
        (tmp_path / name).write_text('{"nums": [1], "target": 1}\n')
    for name, text in {"EMPTY.jsonl": "", "EMPTY.csv": "", "HEADER.csv": "nums,target\n", "GARBAGE.jsonl": "{{no\n",
                       "FILE": "", "STAGE/model/config.json": "{}", "SUDOKU/manifest.json":
                       '{"stage": "generate", "config": {"domain": "sudoku"}}'}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    io.write_parquet(pa.table({"id": [0], "nums": [[1, 2]], "target": [3]}), str(tmp_path / "P.parquet"))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not (tmp_path / "X").exists() or not any((tmp_path / "X").rglob("*.parquet"))


@pytest.mark.integration  # a subprocess per flow
@pytest.mark.parametrize("command,preset,last", [("study", "smoke-study", "study-report"),
                                                 ("ladder", "ladder-cpu", "ladder-report")])
def test_study_and_ladder_dry_runs_plan_every_stage_and_touch_nothing(tmp_path, command, preset, last):
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", command, "-c", preset, "--run-dir", str(run_dir),
                           "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].split()[:2] == [last, "run"] and all(line.split()[1] == "run" for line in lines)
    n = len(lines)
    assert f"{n} of {n} stages would run" in proc.stderr and not run_dir.exists()


def test_the_core_never_imports_the_orchestrator():
    root = Path(__file__).parents[1] / "sbt_core"
    for f in root.rglob("*.py"):
        for line in f.read_text().splitlines():
            assert not line.strip().startswith(("import prefect", "from prefect")), f


def test_configs_name_the_field_path():
    from pydantic import ValidationError

    from sbt_core.config import ModelConfig, SearchConfig, format_validation_error
    from sbt_core.domains.countdown.config import GenerateConfig

    with pytest.raises(ValidationError) as e:
        SearchConfig(n=0, decoder="nope", extra_key=1)
    text = format_validation_error(e.value, prefix="search")
    assert "search.n:" in text and "search.decoder:" in text and "search.extra_key:" in text
    with pytest.raises(ValidationError, match="exactly one"):
        ModelConfig(size="1m", path="/x")
    with pytest.raises(ValidationError, match="number_min"):
        GenerateConfig(number_min=50, number_max=10)
