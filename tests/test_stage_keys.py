"""Stage keys: the code a stage runs (found from its imports), its parameters and its inputs; work of
another key is moved aside, never deleted, and moved back when its key comes back.

The integration test runs `sbt` from a copy of the source (PYTHONPATH first, ahead of the editable
install), edits that copy as a researcher edits code between runs, and reads `run.json` back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sbt_core import fingerprint
from tasks import stages

ROOT = Path(__file__).resolve().parent.parent


def _short(entry: str) -> set[str]:
    return {m.removeprefix("sbt_core.") for m in fingerprint.code(entry)}


def test_each_stage_hashes_the_modules_it_reaches_and_no_others():
    report, train = _short("sbt_core.reports.pipeline:run"), _short("sbt_core.train:train")
    generate = _short("sbt_core.domains:get")
    assert {"reports.pipeline", "reports.grpo", "metrics", "io", "config", "sbt_core"} <= report
    assert "train" not in report and "reports.ablations" not in report
    assert {"train", "models", "config", "io"} <= train and not any(m.startswith("reports") for m in train)
    assert "domains.countdown.generate" in generate and "domains.sudoku.solver" in generate
    assert not {"train", "reports.pipeline", "evaluate", "search.run"} & generate
    # study-eval does not reach the study's report.
    assert "reports.study" not in _short("sbt_core.study:run") and "reports.study" in _short("sbt_core.reports.study:run")
    # A registry dict names the decoders: the search reaches every decoder's module through it.
    assert {"search.backtrack", "search.decoders", "search.reference"} <= _short("sbt_core.search.run:run")
    assert all(len(h) == 12 for h in fingerprint.code("sbt_core.train:train").values())


def test_every_declared_stage_has_an_entry_that_exists():
    for name, decl in stages.STAGES.items():
        assert fingerprint.code(*decl.entry), name
    assert stages.HEAVY == {"sft", "grpo", "evaluate", "search", "study-eval", "onpolicy"}


def test_key_parts_take_every_parameter_inputs_by_key_less_the_ignored_fields():
    from sbt_core.config import GRPOConfig

    model = {"stage": "sft-bt", "key": "k1", "dir": "/r/sft-bt", "outputs": {"model": "/r/sft-bt/model"}}
    data = {"stage": "generate", "key": "k2", "dir": "/r/data", "outputs": {"train": "/r/data/train.parquet"}}
    params = {"cfg": GRPOConfig(models=["bt"], steps=3), "model": model, "data": data, "out_dir": "/r/grpo-bt",
              "domain": "countdown", "max_completion_length": 64}
    parts = stages.key_parts(stages.STAGES["grpo"], params)
    assert parts["params"]["model"] == {"input": "k1"} and parts["params"]["data"] == {"input": "k2"}
    assert parts["params"]["cfg"]["steps"] == 3 and "models" not in parts["params"]["cfg"]
    assert "sbt_core.grpo" in parts["code"]
    # A field left out of the key does not change it; every other field does.
    other_models = stages.key_parts(stages.STAGES["grpo"], {**params, "cfg": GRPOConfig(models=["sft"], steps=3)})
    more_steps = stages.key_parts(stages.STAGES["grpo"], {**params, "cfg": GRPOConfig(models=["bt"], steps=4)})
    assert stages.stage_key(other_models) == stages.stage_key(parts) != stages.stage_key(more_steps)
    record = {"key": stages.stage_key(parts), "parts": parts}
    assert stages.why(record, more_steps) == ["cfg.steps: 3 -> 4"]
    moved_input = stages.key_parts(stages.STAGES["grpo"], {**params, "model": {**model, "key": "k9"}})
    assert stages.why(record, moved_input) == ["input model changed"]
    changed_code = {**parts, "code": {**parts["code"], "sbt_core.grpo": "0" * 12}}
    assert stages.why(record, changed_code) == ["code changed: grpo"]
    assert stages.why({"key": "old"}, parts) == ["its record predates per-stage keys"]


def test_long_strings_are_cut_around_their_difference():
    a, b = "x" * 100 + "code 0.1.0+aaaa", "x" * 100 + "code 0.1.0+bbbb"
    before, after = stages._around_difference(a, b)
    assert "aaaa" in before and "bbbb" in after and len(before) < 60


# --- the pipeline, from an editable copy of the source ---------------------------------------------------------

# The smoke preset without its GRPO round (the round's stages are keyed like any other; fewer stages, faster).
FAST = ["-c", "smoke", "--set", "grpo.models=[]"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = tmp_path_factory.mktemp("source")
    for name in ("sbt_core", "tasks", "flows", "deployments", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _sbt(api: str, src: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PYTHONPATH": str(src)}
    env.pop(stages.FAIL_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=src, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _ran(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "run.json").read_text())["ran"]


def _plan(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


@pytest.mark.integration
def test_a_code_edit_reruns_what_it_touches_and_a_changed_config_keeps_the_old_work(prefect_server, source, tmp_path):
    api, run = prefect_server, tmp_path / "run"
    _sbt(api, source, "run", *FAST, "--run-dir", str(run))
    everything = _ran(run)
    assert everything[0] == "generate" and everything[-1] == "report" and "sft-bt" in everything

    # A comment in the report's module: the report alone reruns.
    with open(source / "sbt_core" / "reports" / "pipeline.py", "a") as f:
        f.write("\n# a comment: nothing but the report reads this file\n")
    plan = _plan(_sbt(api, source, "status", str(run)).stdout)
    assert "code changed: reports.pipeline" in plan["report"] and "cached" in plan["sft-bt"]
    _sbt(api, source, "run", *FAST, "--run-dir", str(run))
    assert _ran(run) == ["report"]

    # An edit of the trainer: SFT and everything downstream rerun; generation and data do not.
    with open(source / "sbt_core" / "train.py", "a") as f:
        f.write("\n# an edit of the trainer\n")
    _sbt(api, source, "run", *FAST, "--run-dir", str(run))
    ran = _ran(run)
    assert not {"generate", "build-data-op", "build-data-bt"} & set(ran)
    assert {"sft-op", "sft-bt", "eval-sft-op", "eval-sft-bt", "ei1-search", "ei1-sft", "ei1-evaluate", "report"} <= set(ran)
    moved = {m["stage"]: m for m in json.loads((run / "run.json").read_text())["superseded"]}
    assert "code changed: train" in moved["sft-bt"]["why"]
    assert (Path(moved["sft-bt"]["moved_to"]) / "model" / "model.safetensors").is_file()

    # A changed field: status names it; the run keeps the old model under .superseded/.
    steps = ["--set", "sft.max_steps=7"]
    plan = _plan(_sbt(api, source, "run", *FAST, *steps, "--run-dir", str(run), "--dry-run").stdout)
    assert "cfg.max_steps:" in plan["sft-bt"] and "-> 7" in plan["sft-bt"] and "cached" in plan["build-data-bt"]
    old_key = json.loads((run / "sft-bt" / "stage.json").read_text())["key"]
    _sbt(api, source, "run", *FAST, *steps, "--run-dir", str(run))
    kept = run / ".superseded" / f"sft-bt-{old_key}"
    assert (kept / "model" / "model.safetensors").is_file()
    assert json.loads((kept / "stage.json").read_text())["status"] == "done"
    assert json.loads((run / "sft-bt" / "stage.json").read_text())["key"] != old_key

    # Back to the previous config: its work is moved back from .superseded/, nothing retrains.
    plan = _plan(_sbt(api, source, "status", str(run), "-c", "smoke", "--set", "grpo.models=[]").stdout)
    assert "restore" in plan["sft-bt"]
    _sbt(api, source, "run", *FAST, "--run-dir", str(run))
    assert not {"sft-op", "sft-bt", "ei1-sft"} & set(_ran(run))
    assert json.loads((run / "sft-bt" / "stage.json").read_text())["key"] == old_key

    # gc lists, then removes, what was superseded.
    listed = _sbt(api, source, "gc", str(run), "--dry-run").stdout
    assert "would remove" in listed and ".superseded/sft-bt-" in listed
    _sbt(api, source, "gc", str(run))
    assert not list(run.rglob(".superseded/*"))
    assert (run / "sft-bt" / "model" / "model.safetensors").is_file()
