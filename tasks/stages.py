"""One Prefect task per pipeline stage, each a thin wrapper over one `sbt_core` call.

A stage takes configs and the results of the stages it reads (URIs only, never models or
tables) and returns a `StageResult` dict: `{"stage", "key", "dir", "outputs": {name: uri}}`.

Caching. A stage's key hashes its name, its config, its output folder, the keys of the stages
it reads and the code version of `sbt_core`. The stage writes `stage.json` in its folder twice:
`status: running` with the key before any work, `status: done` with the outputs after all of
them are written. A rerun whose key matches a `done` record returns it at once, in a Prefect
state named `Cached`; a `running` record with the same key means a killed or failed attempt,
which resumes (SFT from its last checkpoint, search from its last shard); a record with
another key means the folder holds stale work, which is removed first. Because the record
lives beside the artifacts, the cache works from the CLI, from a UI retry and across Prefect
databases, and a deleted output is recomputed.

Fault injection (for tests and drills): `SBT_FAIL_STAGES=sft-bt,ei1-search` makes the named
stages raise before doing any work; so does listing them in the file named by
`SBT_FAIL_STAGES_FILE` (delete the file, then retry: the cause is gone, as after a real fix).
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from sbt_core import domains, io
from sbt_core.config import (BuildDataConfig, EvalConfig, GenerateConfig, GRPOConfig, ModelConfig, OnPolicyConfig,
                             SearchConfig, StudyEvalConfig, TrainConfig)
from sbt_core.ladder import LadderConfig

StageResult = dict[str, Any]
RECORD = "stage.json"
FAIL_ENV = "SBT_FAIL_STAGES"
FAIL_FILE_ENV = "SBT_FAIL_STAGES_FILE"
STORAGE_BLOCK_ENV = "SBT_STORAGE_BLOCK"  # a RemoteFileSystem block whose settings carry S3 credentials
HEAVY = {"sft", "grpo", "evaluate", "search", "study-eval", "onpolicy"}  # task names that want a GPU


class InjectedFailure(RuntimeError):
    """Raised by a stage named in SBT_FAIL_STAGES."""


def stage_key(stage: str, config: Any, upstream: list[StageResult], out_dir: str) -> str:
    return io.config_hash(
        {"stage": stage, "config": config, "upstream": [u["key"] for u in upstream], "out_dir": str(out_dir),
         "code_version": io.code_version()}
    )


def external(uri: str, name: str = "model") -> StageResult:
    """A StageResult for a URI given from outside (a model path): keyed by its stage record if any."""
    parent = io.parent(uri)
    record = io.join(parent, RECORD)
    key = io.read_json(record)["key"] if io.exists(record) else io.config_hash({"uri": uri})
    return {"stage": "external", "key": key, "dir": parent, "outputs": {name: uri}}


def use_storage_block() -> None:
    """Take storage credentials from the Prefect block named in SBT_STORAGE_BLOCK, if set.

    The block is a core `RemoteFileSystem` (type slug `remote-file-system`); its `settings` are
    fsspec options, e.g. {"key": ..., "secret": ..., "client_kwargs": {"endpoint_url": ...}}.
    Without it, s3fs reads the standard AWS environment variables.
    """
    name = os.environ.get(STORAGE_BLOCK_ENV)
    if name:
        io.set_storage_options(_block_settings(name))


@functools.lru_cache(maxsize=None)
def _block_settings(name: str) -> dict[str, Any]:
    """One read of the block per process (every stage asks for it)."""
    from prefect.filesystems import RemoteFileSystem

    return RemoteFileSystem.load(name.removeprefix("remote-file-system/")).settings


def run_stage(stage: str, out_dir: str, config: Any, upstream: list[StageResult],
              work: Callable[[], dict[str, str]]):
    """The caching protocol above around `work()`, which returns the stage's outputs (name -> URI)."""
    logger = get_run_logger()
    use_storage_block()
    key = stage_key(stage, config, upstream, out_dir)
    record_uri = io.join(out_dir, RECORD)
    record = _read_record(record_uri)
    if record and (broken := io.unreadable(out_dir)):
        # A torn write (every write is temp file + rename, so: a disk fault or a hand edit): start over.
        logger.warning("%s: unreadable artifacts in %s: %s; rerunning the stage from scratch", stage, out_dir,
                       "; ".join(broken))
        io.remove(out_dir)
        record = None
    if record and record.get("key") == key and record.get("status") == "done":
        if all(io.exists(u) for u in record["outputs"].values()):
            logger.info("%s: cached, outputs in %s (key %s)", stage, out_dir, key)
            return Completed(name="Cached", message=f"outputs of key {key} in {out_dir}", data=record)
        logger.warning("%s: an output listed in %s is missing; recomputing", stage, record_uri)
    elif record and record.get("key") != key:
        logger.info("%s: %s holds work of another key (%s); removing it", stage, out_dir, record.get("key"))
        io.remove(out_dir)
    elif record:
        logger.info("%s: resuming an unfinished attempt in %s", stage, out_dir)
    if left := io.remove_temp_files(out_dir):  # a write killed midway leaves its temp file, never the artifact
        logger.info("%s: removed %d temporary file(s) of a killed attempt", stage, len(left))
    _maybe_fail(stage)
    io.write_json({"stage": stage, "key": key, "dir": str(out_dir), "status": "running"}, record_uri)
    t0 = time.monotonic()
    outputs = work()
    record = {"stage": stage, "key": key, "dir": str(out_dir), "status": "done", "outputs": outputs,
              "seconds": round(time.monotonic() - t0, 3), "code_version": io.code_version()}
    io.write_json(record, record_uri)
    logger.info("%s: done in %.1f s", stage, record["seconds"])
    return record


def _read_record(uri: str) -> dict | None:
    """The stage record; one that is not JSON reads as {"status": "unreadable"} (then the folder check
    above names it and the stage reruns)."""
    if not io.exists(uri):
        return None
    try:
        return io.read_json(uri)
    except (ValueError, UnicodeDecodeError):
        return {"status": "unreadable"}


def _maybe_fail(stage: str) -> None:
    names = os.environ.get(FAIL_ENV, "").split(",")
    fail_file = os.environ.get(FAIL_FILE_ENV)
    if fail_file and os.path.exists(fail_file):
        with open(fail_file) as f:
            names += f.read().replace(",", " ").split()
    if stage in names:
        raise InjectedFailure(f"{stage}: failure injected by {FAIL_ENV} / {FAIL_FILE_ENV}")


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) for a stage name."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


class Progress:
    """A stage's progress artifact (key `progress-<stage>`, one per stage on the Artifacts page) and a
    log line every 10%, fed by sbt_core's progress callbacks."""

    def __init__(self, stage: str, total: int, what: str):
        self.total, self.done, self.shown, self.logged = max(total, 1), 0, 0.0, 0
        self.description = f"{stage}: {what}"
        self.id = create_progress_artifact(0.0, key=f"progress-{artifact_key(stage)}", description=self.description)
        self.last = time.monotonic()

    def __call__(self, *args) -> None:
        self.done += args[-1] if args else 1
        pct = min(100.0, 100.0 * self.done / self.total)
        if pct >= 100 or (pct - self.shown >= 1 and time.monotonic() - self.last >= 2):
            update_progress_artifact(self.id, pct)
            self.shown, self.last = pct, time.monotonic()
        if int(pct // 10) > self.logged:
            self.logged = int(pct // 10)
            get_run_logger().info("%s: %.0f%%", self.description, pct)


def _train_progress(progress: Progress):
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            progress.total = max(state.max_steps, 1)
            progress.done = state.global_step

        def on_step_end(self, args, state, control, **kw):
            progress(1)

    return Callback()


_opts = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="generate", task_run_name="{stage_name}", **_opts)
def generate(stage_name: str, cfg: GenerateConfig, out_dir: str):
    """The problems of `cfg.domain` (its generator's settings)."""

    def work():
        bar = Progress(stage_name, cfg.total, "problems")
        return domains.get(cfg.domain).generate(cfg, out_dir, progress=bar)

    return run_stage(stage_name, out_dir, cfg.model_dump(mode="json"), [], work)


@task(name="build-data", task_run_name="{stage_name}", **_opts)
def build_data(stage_name: str, cfg: BuildDataConfig, data: StageResult, out_dir: str, domain: str = "countdown"):
    from sbt_core import build_data as stage

    return run_stage(stage_name, out_dir, {**cfg.model_dump(mode="json"), "domain": domain}, [data],
                     lambda: stage.run(cfg, data["outputs"]["train"], out_dir, domain))


@task(name="sft", task_run_name="{stage_name}", **_opts)
def sft(stage_name: str, cfg: TrainConfig, model: ModelConfig, data: StageResult, out_dir: str,
        base: StageResult | None = None):
    """SFT; `base` is the StageResult of the model fine-tuned further (its URI goes in model.path)."""
    from sbt_core import train as stage

    def work():
        rows = io.parquet_rows(data["outputs"]["sft"])
        if rows == 0:  # nothing verified to distill: the round keeps its base model
            get_run_logger().warning("%s: no training rows; keeping the base model %s", stage_name, model.path)
            return {"model": model.path}
        bar = Progress(stage_name, 1, "optimiser steps")
        return stage.train(cfg, model, data["outputs"]["sft"], out_dir, callbacks=[_train_progress(bar)])

    config = {"train": cfg.model_dump(mode="json"), "model": model.model_dump(mode="json")}
    return run_stage(stage_name, out_dir, config, [data] + ([base] if base else []), work)


@task(name="grpo", task_run_name="{stage_name}", **_opts)
def grpo(stage_name: str, cfg: GRPOConfig, model: StageResult, data: StageResult, out_dir: str,
         domain: str = "countdown", max_completion_length: int = 64):
    """GRPO from the verifier's reward on the train problems, starting from `model` (`grpo.train`)."""
    from sbt_core import grpo as stage

    def work():
        bar = Progress(stage_name, cfg.steps, "GRPO steps")
        return stage.train(cfg, model["outputs"]["model"], data["outputs"]["train"], out_dir, domain=domain,
                           max_completion_length=max_completion_length, callbacks=[_train_progress(bar)])

    # Which models get GRPO and how they are evaluated afterwards do not change this model.
    config = {"grpo": cfg.model_dump(mode="json", exclude={"models", "eval_ks", "eval_limit", "methods"}), "domain": domain,
              "max_completion_length": max_completion_length}
    return run_stage(stage_name, out_dir, config, [model, data], work)


@task(name="evaluate", task_run_name="{stage_name}", **_opts)
def evaluate(stage_name: str, cfg: EvalConfig, methods: list[str], model: StageResult, data: StageResult,
             out_dir: str, domain: str = "countdown"):
    from sbt_core import evaluate as stage

    def work():
        splits = cfg.splits or domains.get(domain).eval_splits
        per_split = [min(cfg.limit or 10**12, io.parquet_rows(data["outputs"][s])) for s in splits]
        bar = Progress(stage_name, len(methods) * sum(per_split), "problems searched")
        configs = {m: cfg.search_config(m) for m in methods}
        return stage.run(model["outputs"]["model"], data["dir"], out_dir, configs, domain=domain, limit=cfg.limit,
                         splits=splits, progress=bar)

    config = {"eval": cfg.model_dump(mode="json"), "methods": methods, "domain": domain}
    return run_stage(stage_name, out_dir, config, [model, data], work)


@task(name="search", task_run_name="{stage_name}", **_opts)
def search(stage_name: str, cfg: SearchConfig, model: StageResult, data: StageResult, split: str, limit: int,
           out_dir: str, domain: str = "countdown"):
    from sbt_core.search import run as stage

    def work():
        bar = Progress(stage_name, min(limit, io.parquet_rows(data["outputs"][split])), "problems searched")
        return stage.run(cfg, model["outputs"]["model"], data["outputs"][split], out_dir, domain=domain, limit=limit,
                         progress=bar)

    config = {"search": cfg.model_dump(mode="json"), "split": split, "limit": limit, "domain": domain}
    return run_stage(stage_name, out_dir, config, [model, data], work)


@task(name="distill", task_run_name="{stage_name}", **_opts)
def distill(stage_name: str, results: StageResult, out_dir: str, transductive: bool = False,
            domain: str = "countdown"):
    from sbt_core import distill as stage

    return run_stage(stage_name, out_dir, {"transductive": transductive, "domain": domain}, [results],
                     lambda: stage.run(results["outputs"]["results"], out_dir, domain=domain,
                                       transductive=transductive))


def _with_copies_up(made: dict[str, str], run_dir: str) -> dict[str, str]:
    """A report's outputs plus a copy of each in the run folder (`<name>_top`)."""
    return {**made, **{f"{name}_top": io.copy(uri, io.join(run_dir, io.basename(uri))) for name, uri in made.items()}}


@task(name="report", task_run_name="{stage_name}", **_opts)
def report(stage_name: str, title: str, evaluations: dict[str, StageResult], out_dir: str, search_method: str,
           notes: list[str] = (), labels: dict[str, str] | None = None,
           grpo: dict[str, dict[str, StageResult]] | None = None):
    """report.md, metrics.json and plots in out_dir, with copies one level up (the run folder).

    `grpo[model]`: {"before", "after" (its pass@k study-evals), "grpo" (the GRPO stage)} per model tuned.
    """
    from sbt_core import report as stage

    summaries = {model: ev["outputs"]["summary"] for model, ev in evaluations.items()}
    tuned = {model: {"before": r["before"]["outputs"]["study"], "after": r["after"]["outputs"]["study"],
                     "metrics": r["grpo"]["outputs"]["metrics"]} for model, r in (grpo or {}).items()}
    config = {"title": title, "models": list(evaluations), "search_method": search_method, "notes": list(notes),
              **({"labels": labels} if labels else {}), **({"grpo": sorted(tuned)} if tuned else {})}
    run_dir = io.parent(out_dir)
    upstream = list(evaluations.values()) + [r[k] for r in (grpo or {}).values() for k in ("before", "after", "grpo")]

    def work():
        made = stage.run(summaries, out_dir, title, list(notes), search_method, labels, tuned)
        return _with_copies_up(made, run_dir)

    return run_stage(stage_name, out_dir, config, upstream, work)


@task(name="ablation-report", task_run_name="{stage_name}", **_opts)
def ablation_report(stage_name: str, title: str, variants: dict[str, StageResult], grid: StageResult, out_dir: str,
                    notes: list[str] = ()):
    """ablations.md, ablations.json and ablations.png in out_dir."""
    from sbt_core import report as stage

    summaries = {name: ev["outputs"]["summary"] for name, ev in variants.items()}
    config = {"title": title, "variants": list(variants), "notes": list(notes)}
    upstream = [grid, *variants.values()]
    return run_stage(stage_name, out_dir, config, upstream,
                     lambda: stage.run_ablations(summaries, grid["outputs"]["summary"], out_dir, title, list(notes)))


@task(name="study-eval", task_run_name="{stage_name}", **_opts)
def study_eval(stage_name: str, cfg: StudyEvalConfig, kind: str, model: StageResult, data: StageResult, out_dir: str,
               domain: str = "countdown", max_new_tokens: int = 64):
    """One model's accuracy-vs-compute curves (`study.run`): kind budget, samples or search."""
    from sbt_core import study as stage

    def work():
        steps = {"budget": 2, "samples": 1, "search": 1 + len(cfg.search_methods)}[kind]
        bar = Progress(stage_name, steps * cfg.limit, "problems decoded")
        return stage.run(model["outputs"]["model"], data["dir"], out_dir, cfg, kind=kind, domain=domain,
                         max_new_tokens=max_new_tokens, progress=bar)

    config = {"study": cfg.model_dump(mode="json"), "kind": kind, "domain": domain, "max_new_tokens": max_new_tokens}
    return run_stage(stage_name, out_dir, config, [model, data], work)


@task(name="study-report", task_run_name="{stage_name}", **_opts)
def study_report(stage_name: str, title: str, parts: dict[str, dict], evaluations: dict[str, dict[str, StageResult]],
                 out_dir: str, notes: list[str] = ()):
    """study.md, study.json and one plot per part in out_dir, with copies one level up (the run folder).

    `parts[label]`: {"domain", "generate", "labels", "training" (model -> its SFT metrics URI)};
    `evaluations[label][model]`: its study-eval result.
    """
    from sbt_core import study as stage

    config = {"title": title, "parts": parts, "models": {k: list(v) for k, v in evaluations.items()},
              "notes": list(notes)}
    upstream = [ev for per in evaluations.values() for ev in per.values()]
    run_dir = io.parent(out_dir)

    def work():
        full = {label: {**part, "studies": {m: io.read_json(ev["outputs"]["study"])
                                            for m, ev in evaluations[label].items()},
                        "training": {m: io.read_json(uri) for m, uri in part.get("training", {}).items()}}
                for label, part in parts.items()}
        made = stage.report(full, out_dir, title, list(notes))
        return _with_copies_up(made, run_dir)

    return run_stage(stage_name, out_dir, config, upstream, work)


@task(name="onpolicy", task_run_name="{stage_name}", **_opts)
def onpolicy(stage_name: str, cfg: OnPolicyConfig, model: StageResult, data: StageResult, base: StageResult,
             out_dir: str, domain: str = "countdown"):
    """`base`'s SFT rows plus D_back rows from `model`'s own wrong steps on the train problems (`sbt_core.onpolicy`)."""
    from sbt_core import onpolicy as stage

    config = {"onpolicy": cfg.model_dump(mode="json", exclude={"source"}), "domain": domain}
    return run_stage(stage_name, out_dir, config, [model, data, base],
                     lambda: stage.run(cfg, model["outputs"]["model"], data["outputs"]["train"], base["outputs"]["sft"],
                                       out_dir, domain))


@task(name="ladder-report", task_run_name="{stage_name}", **_opts)
def ladder_report(stage_name: str, ladder: LadderConfig, rungs: dict[str, dict[str, StageResult]], out_dir: str,
                  notes: list[str] = ()):
    """ladder.md, ladder.json and ladder.png in out_dir, with copies one level up (the ladder's run folder);
    `rungs[name]` holds its `sft` and `eval` results."""
    from sbt_core import ladder as stage

    config = {"ladder": ladder.model_dump(mode="json"), "rungs": list(rungs), "notes": list(notes)}
    upstream = [r for per in rungs.values() for r in per.values()]

    def work():
        rows = []
        for name, per in rungs.items():
            summary = io.read_json(per["eval"]["outputs"]["summary"])
            split = list(summary[ladder.search])[-1]
            results = {m: io.join(per["eval"]["dir"], m, split, "results.parquet") for m in ladder.methods}
            rows.append(stage.rung_row(name, ladder.rungs[name], ladder, io.read_json(per["sft"]["outputs"]["metrics"]),
                                       summary, results))
        return _with_copies_up(stage.report(rows, ladder, out_dir, list(notes)), io.parent(out_dir))

    return run_stage(stage_name, out_dir, config, upstream, work)


TASKS = {t.name: t for t in (generate, build_data, sft, grpo, evaluate, search, distill, report, ablation_report,
                             study_eval, study_report, onpolicy, ladder_report)}


def coerce_params(task_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """JSON parameters (as sent through a deployment) back into the task's config models."""
    import typing

    from pydantic import TypeAdapter

    hints = typing.get_type_hints(TASKS[task_name].fn, include_extras=True)
    return {name: TypeAdapter(hints[name]).validate_python(value) if name in hints else value
            for name, value in params.items()}
