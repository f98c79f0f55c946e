"""One Prefect task per pipeline stage, each a declaration around one `sbt_core` call.

A stage is declared once, by `@stage(name, entry=..., heavy=..., ignore=...)` on a plain function
whose keyword parameters are its configs (pydantic models), the results of the stages it reads
(`StageResult`s: URIs only, never models or tables) and its `out_dir`. From that one declaration
come the Prefect task (called with keywords; `task_run_name` is the stage's instance name), its
deployment parameters (`coerce_params` reads the same annotations) and its cache key. The function
body does the work and returns the stage's outputs (name -> URI); the task returns a `StageResult`
dict: `{"stage", "key", "dir", "outputs": {name: uri}}`.

Cache key (`key_parts`): the declaration's name; every parameter, configs in full (less the fields
named in `ignore`, which do not change the outputs) and each input stage by its key; and the code
the stage runs, `fingerprint.code(entry)`: a hash per `sbt_core` module its entry function reaches.
So a forgotten field cannot reuse a stale artifact, and an edit reruns only the stages whose code
it touches (and, through their keys, the stages that read them).

The stage writes `stage.json` in its folder twice: `status: running` with the key and its parts
before any work, `status: done` with the outputs after all of them are written. A rerun whose key
matches a `done` record returns it at once, in a Prefect state named `Cached`; a `running` record
with the same key means a killed or failed attempt, which resumes (SFT from its last checkpoint,
search from its last shard). A folder holding work of another key is never deleted (only a folder
whose artifacts do not open is cleared, with a warning naming them): it is moved to
`<parent>/.superseded/<stage>-<old key>/` (the run folder's `.superseded/` for a top-level stage),
with the reasons (config fields, inputs, code modules) in the log, in the new record and in the
run's `run.json`; a later run whose key matches superseded work moves it back instead of redoing
it. `sbt gc RUN_DIR` lists and removes superseded work. Because the record lives beside the
artifacts, the cache works from the CLI, from a UI retry and across Prefect databases, and a
deleted output is recomputed.

Fault injection (for tests and drills): `SBT_FAIL_STAGES=sft-bt,ei1-search` makes the named
stages raise before doing any work; so does listing them in the file named by
`SBT_FAIL_STAGES_FILE` (delete the file, then retry: the cause is gone, as after a real fix).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fcntl
import functools
import importlib
import inspect
import os
import re
import signal
import time
from typing import Any, Callable

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from sbt_core import chatter, domains, fingerprint, io
from sbt_core.config import (BuildDataConfig, EvalConfig, GenerateConfig, GRPOConfig, ModelConfig, OnPolicyConfig,
                             SearchConfig, StudyEvalConfig, TrainConfig)
from sbt_core.ladder import LadderConfig

StageResult = dict[str, Any]
RECORD = "stage.json"
SUPERSEDED = ".superseded"
FAIL_ENV = "SBT_FAIL_STAGES"
FAIL_FILE_ENV = "SBT_FAIL_STAGES_FILE"
STORAGE_BLOCK_ENV = "SBT_STORAGE_BLOCK"  # a RemoteFileSystem block whose settings carry S3 credentials


class InjectedFailure(RuntimeError):
    """Raised by a stage named in SBT_FAIL_STAGES."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage's declaration: `name` (the task's), `entry` ("module:function" of the `sbt_core` code it runs,
    fingerprinted with all it reaches), `heavy` (wants a GPU: the GPU pool in deployments mode), `ignore`
    (dotted parameter paths, e.g. "cfg.models", that do not change the outputs) and `fn` (the work)."""

    name: str
    entry: tuple[str, ...]
    fn: Callable[..., dict[str, str]]
    heavy: bool = False
    ignore: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {}
PLANNED: dict[str, StageResult] = {}  # while planning (flows.ledger): stage folder -> its planned result
FANS_OUT = ("search", "evaluate", "study-eval", "onpolicy")  # stages whose shards can run as their own flow runs (`execution.shard_runs`)
_running_key: contextvars.ContextVar[str] = contextvars.ContextVar("sbt_stage_key", default="")
_fan_out: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("sbt_fan_out", default=None)


def stage(name: str, *, entry: str | tuple[str, ...], heavy: bool = False, ignore: tuple[str, ...] = ()):
    """Declare a stage (see the module docstring): the decorated function becomes its Prefect task.
    `entry`: the `sbt_core` function(s) the body calls, "module:function"."""

    def declare(fn):
        decl = Stage(name, (entry,) if isinstance(entry, str) else tuple(entry), fn, heavy, ignore)
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            params = signature.bind(*args, **kwargs)
            params.apply_defaults()
            params = dict(params.arguments)
            return run_stage(decl, params.pop("stage_name"), params, lambda: fn(*args, **kwargs))

        STAGES[name] = decl
        # No log_prints: a stage's own lines are log records; what libraries print is not a log line (dill's
        # fingerprinting in `datasets` prints a bytecode listing it means to capture, which log_prints logged).
        return task(name=name, task_run_name="{stage_name}", cache_policy=NO_CACHE, persist_result=False,
                    log_prints=False)(run)

    return declare


def current_key() -> str:
    """The key of the stage running in this context ("" outside one): names its local staging folder."""
    return _running_key.get()


@contextlib.contextmanager
def fanning_out(make: Callable[[str], Callable]):
    """Stages of `FANS_OUT` called inside send their shards out through `make(stage_name)` (a `FanOut`)."""
    token = _fan_out.set(make)
    try:
        yield
    finally:
        _fan_out.reset(token)


def _fan_out_for(stage_name: str):
    make = _fan_out.get()
    return make(stage_name) if make else None


def _is_result(value: Any) -> bool:
    return isinstance(value, dict) and {"stage", "key", "dir", "outputs"} <= set(value)


def _canonical(value: Any) -> Any:
    """Parameters as JSON: configs dumped in full, an input stage as its key alone."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if _is_result(value):
        return {"input": value["key"]}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _drop(tree: dict, path: str) -> None:
    head, _, rest = path.partition(".")
    if rest and isinstance(tree.get(head), dict):
        _drop(tree[head], rest)
    elif not rest:
        tree.pop(head, None)


def key_parts(decl: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """What a stage's key hashes: its name, its parameters (inputs by key) and the code it runs."""
    canonical = _canonical(params)
    for path in decl.ignore:
        _drop(canonical, path)
    return {"stage": decl.name, "params": canonical, "code": fingerprint.code(*decl.entry)}


def why(before: dict | None, parts: dict[str, Any]) -> list[str]:
    """Why a record's key differs from `parts`: the config fields, inputs and code modules that changed."""
    if not before or "params" not in before.get("parts", {}):
        return ["its record predates per-stage keys"]
    old = before["parts"]
    reasons = [f"input {p} changed" if a.startswith("input ") and b.startswith("input ") else f"{p}: {a} -> {b}"
               for p, a, b in _diff(old["params"], parts["params"])]
    modules = fingerprint.changed(old.get("code", {}), parts["code"])
    if modules:
        reasons.append("code changed: " + ", ".join(m.removeprefix("sbt_core.") for m in modules))
    return reasons or ["its key differs"]


def _diff(a: Any, b: Any, path: str = "") -> list[tuple[str, str, str]]:
    """(path, before, after) for each leaf that differs; an input stage reads `input <key>`."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) == {"input"} and set(b) == {"input"}:
            return [] if a == b else [(path, f"input {a['input']}", f"input {b['input']}")]
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "(unset)"), b.get(k, "(unset)"), f"{path}.{k}" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, *_around_difference(a, b))]


def _around_difference(a: Any, b: Any, width: int = 24) -> tuple[str, str]:
    """Two values as short strings; long strings cut to the neighbourhood of their first difference."""
    x, y = (v if isinstance(v, str) else repr(v) for v in (a, b))
    if len(x) <= 2 * width and len(y) <= 2 * width:
        return x, y
    i = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    start = max(0, i - width // 2)
    cut = lambda s: ("..." if start else "") + s[start:start + 2 * width] + ("..." if len(s) > start + 2 * width else "")
    return cut(x), cut(y)


def stage_key(parts: dict[str, Any]) -> str:
    return io.config_hash(parts)


def external(uri: str, name: str = "model") -> StageResult:
    """A StageResult for a URI given from outside (a model path): keyed by its stage record if any (or,
    while planning, by the planned result of the stage that will write it)."""
    parent = io.parent(uri)
    if str(parent) in PLANNED:
        return {**PLANNED[str(parent)], "outputs": {name: uri}}
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


def superseded_dir(stage_name: str, out_dir: str, key: str) -> str:
    """Where a stage folder's work of key `key` is kept once another key needs the folder."""
    return io.join(io.parent(out_dir), SUPERSEDED, f"{stage_name}-{key}")


def _kept(stage_name: str, out_dir: str, key: str) -> dict | None:
    """The record of finished, readable superseded work of `key` for this stage, if any (moved back, not redone)."""
    kept_dir = superseded_dir(stage_name, out_dir, key)
    kept = _read_record(io.join(kept_dir, RECORD))
    ok = kept and kept.get("key") == key and kept.get("status") == "done" and not io.unreadable(kept_dir)
    return kept if ok else None


def plan(decl: Stage, stage_name: str, params: dict[str, Any]) -> StageResult:
    """What `run_stage` would do, doing nothing: the StageResult with `plan` ("cached", "resume",
    "restore" from superseded work, or "run") and `why`. A stage that would run has no outputs yet."""
    parts = key_parts(decl, params)
    key, out_dir = stage_key(parts), params["out_dir"]
    record = _read_record(io.join(out_dir, RECORD))
    result = {"stage": stage_name, "key": key, "dir": str(out_dir), "outputs": {}}
    if record and record.get("key") == key:
        done = record.get("status") == "done" and all(io.exists(u) for u in record["outputs"].values())
        return {**record, "plan": "cached", "why": []} if done else {**result, "plan": "resume", "why": []}
    if kept := _kept(stage_name, out_dir, key):
        return {**kept, "plan": "restore", "why": ["superseded work of this key is moved back"]}
    return {**result, "plan": "run", "why": why(record, parts) if record else ["no finished work in its folder"]}


def run_stage(decl: Stage, stage_name: str, params: dict[str, Any], work: Callable[[], dict[str, str]]):
    """The caching protocol above around `work()`, which returns the stage's outputs (name -> URI)."""
    logger = get_run_logger()
    chatter.quiet_libraries()  # the stage's progress is its artifact and log lines: no library bars or chatter
    use_storage_block()
    out_dir = params["out_dir"]
    parts = key_parts(decl, params)
    key = stage_key(parts)
    record_uri = io.join(out_dir, RECORD)
    record = _read_record(record_uri)
    moved = []
    if record and (broken := io.unreadable(out_dir)):
        # A torn write (every write is temp file + rename, so: a disk fault or a hand edit): start over. A torn
        # artifact is not finished work, so it is not kept (superseded work of the same key would be restored).
        logger.warning("%s: unreadable artifacts in %s: %s; rerunning the stage from scratch", stage_name, out_dir,
                       "; ".join(broken))
        io.remove(out_dir)
        record = None
    if not (record and record.get("key") == key):
        if _kept(stage_name, out_dir, key):
            kept_dir = superseded_dir(stage_name, out_dir, key)
            if record:
                moved.append(_set_aside(stage_name, out_dir, record, why(record, parts)))
            io.move(kept_dir, out_dir)
            logger.info("%s: moved back the superseded work of this key from %s", stage_name, kept_dir)
            record = _read_record(record_uri)
    if record and record.get("key") == key and record.get("status") == "done":
        if all(io.exists(u) for u in record["outputs"].values()):
            logger.info("%s: cached, outputs in %s (key %s)", stage_name, out_dir, key)
            if moved:
                record = {**record, "superseded": moved}
            return Completed(name="Cached", message=f"outputs of key {key} in {out_dir}", data=record)
        logger.warning("%s: an output listed in %s is missing; recomputing", stage_name, record_uri)
    elif record and record.get("key") != key:
        moved.append(_set_aside(stage_name, out_dir, record, why(record, parts)))
    elif record:
        logger.info("%s: resuming an unfinished attempt in %s", stage_name, out_dir)
    if left := io.remove_temp_files(out_dir):  # a write killed midway leaves its temp file, never the artifact
        logger.info("%s: removed %d temporary file(s) of a killed attempt", stage_name, len(left))
    _maybe_fail(stage_name)
    head = {"stage": stage_name, "task": decl.name, "key": key, "dir": str(out_dir), "parts": parts}
    io.write_json({**head, "status": "running"}, record_uri)
    t0 = time.monotonic()
    token = _running_key.set(key)
    try:
        outputs = work()
    finally:
        _running_key.reset(token)
    record = {**head, "status": "done", "outputs": outputs, "seconds": round(time.monotonic() - t0, 3),
              "code_version": io.code_version(), **({"superseded": moved} if moved else {})}
    io.write_json(record, record_uri)
    logger.info("%s: done in %.1f s", stage_name, record["seconds"])
    return record


def _set_aside(stage_name: str, out_dir: str, record: dict, reasons: list[str]) -> dict[str, Any]:
    """Move a stage folder's work (of another key) to `.superseded/`; never delete it."""
    dest = superseded_dir(stage_name, out_dir, record.get("key") or "unkeyed")
    n = 1
    while io.exists(dest):  # the same old key set aside before (e.g. an unfinished attempt): keep both
        dest, n = f"{superseded_dir(stage_name, out_dir, record.get('key') or 'unkeyed')}.{n}", n + 1
    io.move(out_dir, dest)
    get_run_logger().warning("%s: %s held work of another key (%s, %s); moved to %s because %s", stage_name, out_dir,
                             record.get("key"), record.get("status"), dest, "; ".join(reasons))
    return {"stage": stage_name, "key": record.get("key"), "status": record.get("status"), "moved_to": dest,
            "why": reasons}


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
    """Failure injection for tests and drills. A stage named in SBT_FAIL_STAGES fails every time; one named in the
    file SBT_FAIL_STAGES_FILE fails once: its name is taken out of the file as it fires (under a lock, so of several
    processes exactly one fails). `<name>:kill` in the file kills the process with SIGKILL instead, as the OOM
    killer or a lost node would: the flow run ends Crashed, not Failed."""
    if stage in os.environ.get(FAIL_ENV, "").split(","):
        raise InjectedFailure(f"{stage}: failure injected by {FAIL_ENV}")
    fail_file = os.environ.get(FAIL_FILE_ENV)
    if not (fail_file and os.path.exists(fail_file)):
        return
    with open(fail_file, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        names = f.read().replace(",", " ").split()
        fired = next((n for n in names if n.split(":")[0] == stage), None)
        if fired is None:
            return
        names.remove(fired)
        f.seek(0)
        f.truncate()
        f.write(" ".join(names))
        f.flush()
    if fired.endswith(":kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFailure(f"{stage}: failure injected by {FAIL_FILE_ENV}")


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes only) for a stage name."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


class Progress:
    """A stage's progress artifact (key `progress-<stage>`, one per stage on the Artifacts page) and a
    log line every 10%, fed by sbt_core's progress callbacks."""

    def __init__(self, stage: str, total: int, what: str):
        self.total, self.done, self.shown, self.logged = max(total, 1), 0, 0.0, 0
        self.note = ""  # e.g. the last training loss, shown with the next log line
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
            get_run_logger().info("%s: %.0f%%%s", self.description, pct, f" ({self.note})" if self.note else "")


def _train_progress(progress: Progress):
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            progress.total = max(state.max_steps, 1)
            progress.done = state.global_step

        def on_step_end(self, args, state, control, **kw):
            progress(1)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                progress.note = f"loss {float(logs['loss']):.4g}"

    return Callback()


@stage("generate", entry="sbt_core.domains:get")
def generate(stage_name: str, *, cfg: GenerateConfig, out_dir: str):
    """The problems of `cfg.domain` (its generator's settings)."""
    bar = Progress(stage_name, cfg.total, "problems")
    return domains.get(cfg.domain).generate(cfg, out_dir, progress=bar)


@stage("build-data", entry="sbt_core.build_data:run")
def build_data(stage_name: str, *, cfg: BuildDataConfig, data: StageResult, out_dir: str, domain: str = domains.DEFAULT):
    from sbt_core import build_data as core

    return core.run(cfg, data["outputs"]["train"], out_dir, domain)


@stage("sft", entry="sbt_core.train:train", heavy=True, ignore=("cfg.node_rank", "cfg.rdzv_endpoint"))
def sft(stage_name: str, *, cfg: TrainConfig, model: ModelConfig, data: StageResult, out_dir: str,
        base: StageResult | None = None):
    """SFT; `base` is the StageResult of the model fine-tuned further (its URI goes in model.path)."""
    from sbt_core import train as core

    rows = io.parquet_rows(data["outputs"]["sft"])
    if rows == 0:  # nothing verified to distill: the round keeps its base model
        get_run_logger().warning("%s: no training rows; keeping the base model %s", stage_name, model.path)
        return {"model": model.path}
    bar = Progress(stage_name, 1, "optimiser steps")
    return core.train(cfg, model, data["outputs"]["sft"], out_dir, callbacks=[_train_progress(bar)],
                      staging_key=current_key(), progress_bar=False)


# Which models get GRPO and how they are evaluated afterwards do not change the tuned model.
@stage("grpo", entry="sbt_core.grpo:train", heavy=True,
       ignore=("cfg.models", "cfg.eval_ks", "cfg.eval_limit", "cfg.methods"))
def grpo(stage_name: str, cfg: GRPOConfig, model: StageResult, data: StageResult, out_dir: str,
         domain: str = domains.DEFAULT, max_completion_length: int = 64):
    """GRPO from the verifier's reward on the train problems, starting from `model` (`grpo.train`)."""
    from sbt_core import grpo as core

    bar = Progress(stage_name, cfg.steps, "GRPO steps")
    return core.train(cfg, model["outputs"]["model"], data["outputs"]["train"], out_dir, domain=domain,
                      max_completion_length=max_completion_length, callbacks=[_train_progress(bar)],
                      staging_key=current_key(), progress_bar=False)


@stage("evaluate", entry="sbt_core.evaluate:run", heavy=True)
def evaluate(stage_name: str, *, cfg: EvalConfig, methods: list[str], model: StageResult, data: StageResult,
             out_dir: str, domain: str = domains.DEFAULT):
    from sbt_core import evaluate as core

    splits = cfg.splits or domains.get(domain).eval_splits
    per_split = [min(cfg.limit or 10**12, io.parquet_rows(data["outputs"][s])) for s in splits]
    bar = Progress(stage_name, len(methods) * sum(per_split), "problems searched")
    configs = {m: cfg.search_config(m) for m in methods}
    return core.run(model["outputs"]["model"], data["dir"], out_dir, configs, domain=domain, limit=cfg.limit,
                    splits=splits, progress=bar, fan_out=_fan_out_for(stage_name))


@stage("search", entry="sbt_core.search.run:run", heavy=True)
def search(stage_name: str, *, cfg: SearchConfig, model: StageResult, data: StageResult, split: str, limit: int,
           out_dir: str, domain: str = domains.DEFAULT):
    from sbt_core.search import run as core

    bar = Progress(stage_name, min(limit, io.parquet_rows(data["outputs"][split])), "problems searched")
    return core.run(cfg, model["outputs"]["model"], data["outputs"][split], out_dir, domain=domain, limit=limit,
                    progress=bar, fan_out=_fan_out_for(stage_name))


@stage("distill", entry="sbt_core.distill:run")
def distill(stage_name: str, *, results: StageResult, out_dir: str, transductive: bool = False,
            domain: str = domains.DEFAULT, replay_data: StageResult | None = None, replay: float = 0.0,
            seed: int = 0):
    """Verified outputs of `results` as SFT rows, with `replay` rows of `replay_data`'s SFT set per output."""
    from sbt_core import distill as core

    return core.run(results["outputs"]["results"], out_dir, domain=domain, transductive=transductive,
                    replay_uri=replay_data["outputs"]["sft"] if replay_data else None, replay=replay, seed=seed)


def _with_copies_up(made: dict[str, str], run_dir: str) -> dict[str, str]:
    """A report's outputs plus a copy of each in the run folder (`<name>_top`)."""
    return {**made, **{f"{name}_top": io.copy(uri, io.join(run_dir, io.basename(uri))) for name, uri in made.items()}}


@stage("report", entry="sbt_core.reports.pipeline:run")
def report(stage_name: str, *, title: str, evaluations: dict[str, StageResult], out_dir: str,
           models: dict[str, dict], domain: str, search_method: str, notes: list[str] = (),
           grpo: dict[str, dict[str, StageResult]] | None = None, rounds: list[dict[str, StageResult]] | None = None,
           round_methods: list[str] = ()):
    """report.md, metrics.json and plots in out_dir, with copies one level up (the run folder). `models`:
    `RunConfig.report_models()`. `rounds`: {"eval"} for the start model, then {"search", "distill", "eval"} per
    expert-iteration round, `round_methods` evaluated on each.

    `grpo[model]`: {"before", "after" (its pass@k study-evals), "grpo" (the GRPO stage)} per model tuned.
    """
    from sbt_core.reports import pipeline as core

    summaries = {model: ev["outputs"]["summary"] for model, ev in evaluations.items()}
    tuned = {model: {"before": r["before"]["outputs"]["study"], "after": r["after"]["outputs"]["study"],
                     "metrics": r["grpo"]["outputs"]["metrics"]} for model, r in (grpo or {}).items()}
    parts = [{"eval": r["eval"]["outputs"]["summary"],
              **({"search": r["search"]["outputs"]["results"], "distill": io.join(r["distill"]["dir"], io.MANIFEST)}
                 if "search" in r else {})} for r in rounds or []]
    made = core.run(summaries, out_dir, title, models, domain, list(notes), search_method, tuned, parts or None,
                    list(round_methods))
    return _with_copies_up(made, io.parent(out_dir))


@stage("ablation-report", entry="sbt_core.reports.ablations:run")
def ablation_report(stage_name: str, *, title: str, variants: dict[str, StageResult], grid: StageResult,
                    out_dir: str, model: str, models: dict[str, dict], domain: str, notes: list[str] = ()):
    """ablations.md, ablations.json and ablations.png in out_dir: `model` retrained per variant."""
    from sbt_core.reports import ablations as core

    summaries = {name: ev["outputs"]["summary"] for name, ev in variants.items()}
    return core.run(summaries, grid["outputs"]["summary"], out_dir, title, model, models, domain, list(notes))


@stage("study-eval", entry="sbt_core.study:run", heavy=True)
def study_eval(stage_name: str, *, cfg: StudyEvalConfig, kind: str, model: StageResult, data: StageResult, out_dir: str,
               domain: str = domains.DEFAULT, max_new_tokens: int = 64):
    """One model's accuracy-vs-compute curves (`study.run`): kind budget, samples or search."""
    from sbt_core import study as core

    bar = Progress(stage_name, core.decodes_per_problem(cfg, kind) * cfg.limit, "problems decoded")
    return core.run(model["outputs"]["model"], data["dir"], out_dir, cfg, kind=kind, domain=domain,
                    max_new_tokens=max_new_tokens, progress=bar, fan_out=_fan_out_for(stage_name))


@stage("study-report", entry="sbt_core.reports.study:run")
def study_report(stage_name: str, *, title: str, parts: dict[str, dict], evaluations: dict[str, dict[str, StageResult]],
                 out_dir: str, notes: list[str] = ()):
    """study.md, study.json and one plot per part in out_dir, with copies one level up (the run folder).

    `parts[label]`: {"domain", "generate", "labels", "training" (model -> its SFT metrics URI)};
    `evaluations[label][model]`: its study-eval result.
    """
    from sbt_core.reports import study as core

    full = {label: {**part, "studies": {m: io.read_json(ev["outputs"]["study"]) for m, ev in evaluations[label].items()},
                    "training": {m: io.read_json(uri) for m, uri in part.get("training", {}).items()}}
            for label, part in parts.items()}
    return _with_copies_up(core.run(full, out_dir, title, list(notes)), io.parent(out_dir))


@stage("onpolicy", entry="sbt_core.onpolicy:run", heavy=True, ignore=("cfg.source",))
def onpolicy(stage_name: str, *, cfg: OnPolicyConfig, model: StageResult, data: StageResult, base: StageResult,
             out_dir: str, domain: str = domains.DEFAULT):
    """`base`'s SFT rows plus D_back rows from `model`'s own wrong steps on the train problems (`sbt_core.onpolicy`)."""
    from sbt_core import onpolicy as core

    return core.run(cfg, model["outputs"]["model"], data["outputs"]["train"], base["outputs"]["sft"], out_dir, domain,
                    fan_out=_fan_out_for(stage_name))


@stage("ladder-report", entry=("sbt_core.reports.ladder:run", "sbt_core.reports.ladder:rung_row"))
def ladder_report(stage_name: str, *, ladder: LadderConfig, rungs: dict[str, dict[str, StageResult]], out_dir: str,
                  notes: list[str] = ()):
    """ladder.md, ladder.json and ladder.png in out_dir, with copies one level up (the ladder's run folder);
    `rungs[name]` holds its `sft` and `eval` results."""
    from sbt_core.reports import ladder as core

    rows = []
    for name, per in rungs.items():
        summary = io.read_json(per["eval"]["outputs"]["summary"])
        split = list(summary[ladder.search])[-1]
        results = {m: io.join(per["eval"]["dir"], m, split, "results.parquet") for m in ladder.methods}
        rows.append(core.rung_row(name, ladder.rungs[name], ladder, io.read_json(per["sft"]["outputs"]["metrics"]),
                                  summary, results))
    return _with_copies_up(core.run(rows, ladder, out_dir, list(notes)), io.parent(out_dir))


@task(name="shard", task_run_name="{name}", cache_policy=NO_CACHE, persist_result=False, log_prints=False)
def shard(name: str, entry: str, kwargs: dict[str, Any]) -> Any:
    """One fanned-out unit of a stage (`sbt_core.search.common.Shard`): `entry` ("module:function" in sbt_core)
    called with `kwargs`. It writes only its own files in the stage's folder; the stage's record is its parent's.
    SBT_FAIL_STAGES names it as `<stage>/<unit>` (e.g. `eval-sft-bt/greedy/val_new/shard-00000`)."""
    chatter.quiet_libraries()
    use_storage_block()
    module, _, function = entry.partition(":")
    if module.partition(".")[0] != "sbt_core":
        raise ValueError(f"{name}: entry {entry!r} is not an sbt_core function")
    device = os.environ.get("CUDA_VISIBLE_DEVICES")
    get_run_logger().info("%s: %s on %s", name, entry, f"CUDA_VISIBLE_DEVICES={device}" if device else "this host")
    _maybe_fail(name)
    return getattr(importlib.import_module(module), function)(**kwargs)


TASKS = {t.name: t for t in (shard, generate, build_data, sft, grpo, evaluate, search, distill, report, ablation_report,
                             study_eval, study_report, onpolicy, ladder_report)}
HEAVY = {name for name, decl in STAGES.items() if decl.heavy}  # task names that want a GPU


def coerce_params(task_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """JSON parameters (as sent through a deployment) back into the task's config models."""
    import typing

    from pydantic import TypeAdapter

    hints = typing.get_type_hints(TASKS[task_name].fn, include_extras=True)
    return {name: TypeAdapter(hints[name]).validate_python(value) if name in hints else value
            for name, value in params.items()}
