"""`sbt`: the stage commands of `sbt_core.cli` plus `sbt run`, the whole pipeline through Prefect.

`sbt run` uses Prefect's local mode when no server is configured (a temporary local server on
the SQLite database under PREFECT_HOME, ~/.prefect by default): nothing to start. With
PREFECT_API_URL set, the same command reports to that server.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
from pathlib import Path
from typing import Optional

import typer

from sbt_core.cli import clean_errors, app, err

PRESETS = Path(__file__).resolve().parent.parent / "configs"


def _prefect_env() -> None:
    """Quiet, offline-friendly Prefect defaults (set before prefect is imported; the user's env wins)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sbt_core")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise


@contextlib.contextmanager
def _prefect_session(run_dir: str):
    """The Prefect API a flow command reports to, a log file, and a clean Ctrl-C.

    Library chatter (progress bars of transformers and datasets, their warnings, DeepSpeed's lines) stays off the
    terminal: with a local `run_dir` it is written, with everything else, to run_dir/logs/<time>.log.

    With PREFECT_API_URL set, that server. Without, a temporary `prefect server` on the user's PREFECT_HOME
    database, started in its own process group: Prefect's own temporary server shares the terminal's, so a Ctrl-C
    killed it first and the flow, unable to report its end, retried for minutes and stayed `Running`. Here a Ctrl-C
    (SIGINT) or SIGTERM stops the stage at hand; the flow runs this command started are marked `Cancelled`, the
    server is stopped, and the exit code is 130. A rerun resumes as after a kill (finished stages are cached,
    a training resumes from its last checkpoint).
    """
    started = datetime.datetime.now(datetime.timezone.utc)
    from sbt_core import chatter

    log_file = None if "://" in run_dir else str(Path(run_dir, "logs", f"{started:%Y%m%d-%H%M%S}.log"))
    chatter.quiet_libraries(log_file)
    if log_file:
        err.print(f"log: {log_file}", soft_wrap=True)  # a path, whole, whatever the terminal's width
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    proc, previous = None, signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C
    try:
        with contextlib.ExitStack() as settings:
            if not PREFECT_API_URL.value():
                from flows import local_server

                home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
                home.mkdir(parents=True, exist_ok=True)
                err.print(f"starting a temporary Prefect server on {home} (set PREFECT_API_URL to use your own) ...")
                proc, url = local_server.start(home, scheduler=False)
                settings.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
            try:
                yield
            except KeyboardInterrupt:
                cancelled = _cancel_flow_runs(started)
                err.print(f"[yellow]interrupted[/yellow]: {cancelled} flow run(s) marked Cancelled; "
                          "the same command resumes (finished stages are cached)")
                raise typer.Exit(130) from None
            finally:
                if proc is not None:  # the last log lines and events reach the server before it stops
                    _drain_to_api()
    except KeyboardInterrupt:  # while the temporary server started (`local_server.start` stopped it)
        err.print("[yellow]interrupted[/yellow] before the flow began")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc is not None:
            from flows import local_server

            local_server.stop(proc)
            temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: False}).__enter__()  # the server is gone


def _drain_to_api() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)


def _cancel_flow_runs(since: datetime.datetime) -> int:
    """Mark the flow runs started since `since` that did not finish (running, or crashed by the interrupt) as
    Cancelled; how many."""
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterStartTime, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    unfinished = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since), state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.CRASHED, StateType.PENDING])))
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=unfinished)
            for r in runs:
                client.set_flow_run_state(r.id, Cancelled(message="interrupted (Ctrl-C or SIGTERM)"), force=True)
        return len(runs)
    except Exception as e:  # the server is gone too: nothing to mark
        err.print(f"could not mark the flow runs Cancelled: {type(e).__name__}: {e}")
        return 0


def resolve_preset(config: str) -> Path:
    """A YAML file, or a preset name from configs/ (`tiny` -> configs/tiny.yaml), even beside a folder of that
    name (a run folder `./smoke/` does not hide the `smoke` preset)."""
    path = Path(config)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        return path
    preset = PRESETS / f"{config}.yaml"
    if not preset.is_file() and path.is_dir():
        raise FileNotFoundError(f"{config} is a folder, not a config file or a preset of {PRESETS}")
    return preset


CONFIG_OPT = typer.Option("tiny", "--config", "-c", help="Preset name (configs/NAME.yaml) or a YAML path.")
RUN_DIR_OPT = typer.Option(None, help="Artifacts folder (default runs/<preset name>).")
DRY_RUN = typer.Option(False, "--dry-run", help="Run nothing: print, stage by stage, cached or would run, and why "
                       "(config field, input, or code module).")
SET_OPT = typer.Option([], "--set", help="Override a config value: --set eval.limit=50 (repeatable).")


def _flow_setup(config: str, set_: list[str], run_dir: str | None):
    """The validated preset and run dir, with Prefect's environment set (before prefect is imported)."""
    from sbt_core.config import load_run_config

    from sbt_core import io

    cfg = load_run_config(resolve_preset(config), set_)
    run_dir = run_dir or f"runs/{cfg.name}"
    io.check_folder(run_dir)  # before Prefect starts: a file named like the run folder is a one-line error
    _prefect_env()
    return cfg, run_dir


@app.command()
@clean_errors
def run(
    config: str = CONFIG_OPT,
    run_dir: Optional[str] = RUN_DIR_OPT,
    set_: list[str] = SET_OPT,
    seeds: int = typer.Option(1, min=1, help="Run the pipeline at this many seed offsets (0, 1, ...) and write "
                              "seeds.md with mean and spread (offset 0 in --run-dir, the others in seeds/)."),
    dry_run: bool = DRY_RUN,
):
    """Run the whole pipeline (data, SFT, evaluation, expert iteration, report) as a Prefect flow."""
    cfg, run_dir = _flow_setup(config, set_, run_dir)
    if dry_run:
        from flows.pipeline import pipeline

        _print_plan(pipeline, config=cfg, run_dir=run_dir)
        return
    if seeds > 1:
        from flows.studies import seeds as seeds_flow

        with _prefect_session(run_dir):
            out = seeds_flow(config=cfg, run_dir=run_dir, count=seeds)
        typer.echo(f"seeds: {out['seeds_md']}\n" + "\n".join(f"metrics (seed +{s}): {u}" for s, u in out["metrics"].items()))
        return
    from flows.pipeline import pipeline

    with _prefect_session(run_dir):
        summary = pipeline(config=cfg, run_dir=run_dir)
    if summary["ran"]:
        err.print(f"ran {len(summary['ran'])} stages, {len(summary['cached'])} cached, "
                  f"{summary['wall_seconds']:.0f} s")
    else:
        err.print(f"nothing to do: all {len(summary['cached'])} stages were cached")
    typer.echo(f"report: {summary['report']}\nmetrics: {summary['metrics']}")


def _print_plan(flow, **params) -> None:
    """A flow (pipeline, study, ladder) planned against its run dir's stage records: one line per stage, cached
    or would run and why (no Prefect run, no work)."""
    from flows.ledger import planning

    with planning():
        plan = flow.fn(**params)
    width = max(len(row["stage"]) for row in plan["plan"])
    for row in plan["plan"]:
        typer.echo(f"{row['stage']:<{width}}  {row['plan']:<7}  {'; '.join(row['why'])}".rstrip())
    n = len(plan["would_run"])
    err.print(f"{n} of {len(plan['plan'])} stages would run" if n else f"all {len(plan['plan'])} stages are cached")


@app.command()
@clean_errors
def status(
    run_dir: str = typer.Argument(..., help="A pipeline's run folder (its run.json holds the config it ran)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Plan this preset or YAML instead of the "
                                         "config recorded in RUN_DIR/run.json."),
    set_: list[str] = SET_OPT,
):
    """Stage by stage: cached, or would run and why (config field, input, or which code module changed)."""
    from sbt_core import io

    if config:
        cfg, _ = _flow_setup(config, set_, run_dir)
    else:
        record = io.join(run_dir, "run.json")
        if not io.exists(record):
            raise FileNotFoundError(f"{record} not found: no pipeline ran there (or give --config)")
        from sbt_core.config import load_run_config

        saved = io.read_json(record).get("config")
        if saved is None:
            raise ValueError(f"{record} records no config (written by an older sbt): give --config")
        cfg = load_run_config(overrides=set_, tree=saved)
        _prefect_env()
    from flows.pipeline import pipeline

    _print_plan(pipeline, config=cfg, run_dir=run_dir)


@app.command()
@clean_errors
def gc(
    run_dir: str = typer.Argument(..., help="A run folder: the .superseded/ folders under it are removed."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List superseded work without removing it."),
):
    """Remove superseded work: stage folders moved aside when their config, inputs or code changed."""
    from sbt_core import io
    from tasks.stages import RECORD, SUPERSEDED

    if not io.exists(run_dir):
        raise FileNotFoundError(f"no such run folder: {run_dir}")
    found = io.folders_in(run_dir, SUPERSEDED)
    for folder in found:
        record = io.join(folder, RECORD)
        state = io.read_json(record).get("status", "?") if io.exists(record) else "no record"
        typer.echo(f"{'would remove' if dry_run else 'removed'} {folder}  ({state}, {io.size(folder) / 2**20:.1f} MiB)")
        if not dry_run:
            io.remove(folder)
    err.print(f"{len(found)} superseded folder(s){', nothing removed' if dry_run else ''}")


@app.command()
@clean_errors
def ablate(config: str = CONFIG_OPT, run_dir: Optional[str] = RUN_DIR_OPT, set_: list[str] = SET_OPT):
    """Ablations of the backtracking model (data mix; b x N grid) as a Prefect flow: run_dir/ablations/."""
    cfg, run_dir = _flow_setup(config, set_, run_dir)
    from flows.studies import ablations

    with _prefect_session(run_dir):
        out = ablations(config=cfg, run_dir=run_dir)
    ran = [r["stage"] for r in out["stages"] if not r["cached"]]
    err.print(f"ran {len(ran)} stages, {len(out['stages']) - len(ran)} cached")
    typer.echo(f"ablations: {out['ablations']}")


@app.command()
@clean_errors
def study(
    config: str = typer.Option("study-tiny", "--config", "-c", help="Study preset name (configs/NAME.yaml) or a "
                               "YAML path: `name` and `domains: {label: run config}`."),
    run_dir: Optional[str] = RUN_DIR_OPT,
    set_: list[str] = typer.Option([], "--set", help="Override a value: --set domains.countdown.study.limit=50."),
    dry_run: bool = DRY_RUN,
):
    """Backtracking vs direct models at equal test-time compute, as a Prefect flow: run_dir/study.md."""
    from sbt_core.config import load_study_config

    from sbt_core import io

    cfg = load_study_config(resolve_preset(config), set_)
    io.check_folder(run_dir or f"runs/{cfg.name}")
    _prefect_env()
    from flows.study import study as study_flow

    if dry_run:
        _print_plan(study_flow, config=cfg, run_dir=run_dir or f"runs/{cfg.name}")
        return
    with _prefect_session(run_dir or f"runs/{cfg.name}"):
        out = study_flow(config=cfg, run_dir=run_dir or f"runs/{cfg.name}")
    err.print(f"ran {len(out['ran'])} stages, {len(out['cached'])} cached, {out['wall_seconds']:.0f} s")
    typer.echo(f"study: {out['study_md']}\njson: {out['study_json']}")


@app.command()
@clean_errors
def ladder(
    config: str = typer.Option("ladder-cpu", "--config", "-c", help="Ladder preset name (configs/NAME.yaml) or a "
                               "YAML path: `base`, `set` and `rungs: {name: overrides}`."),
    run_dir: Optional[str] = RUN_DIR_OPT,
    set_: list[str] = typer.Option([], "--set", help="Override a value: --set set.eval.limit=50, "
                                   "--set rungs.1m-1800.sft.max_steps=100 (repeatable)."),
    dry_run: bool = DRY_RUN,
):
    """The compute ladder as a Prefect flow: per rung SFT and evaluation, then run_dir/ladder.md. Resumable:
    rerun the same command after a kill, or with more rungs."""
    from sbt_core.ladder import load_ladder_config

    from sbt_core import io

    cfg = load_ladder_config(resolve_preset(config), set_, resolve=resolve_preset)
    io.check_folder(run_dir or f"runs/{cfg.name}")
    _prefect_env()
    from flows.ladder import ladder as ladder_flow

    if dry_run:
        _print_plan(ladder_flow, config=cfg, run_dir=run_dir or f"runs/{cfg.name}")
        return
    with _prefect_session(run_dir or f"runs/{cfg.name}"):
        out = ladder_flow(config=cfg, run_dir=run_dir or f"runs/{cfg.name}")
    err.print(f"ran {len(out['ran'])} stages, {len(out['cached'])} cached, {out['wall_seconds']:.0f} s")
    typer.echo(f"ladder: {out['ladder_md']}\njson: {out['ladder_json']}")


@app.command()
@clean_errors
def deploy(
    config: str = typer.Option("tiny", "--config", "-c", help="Preset name or YAML path: the deployments' default "
                               "parameters (a study config, e.g. study-17m: the study deployment's)."),
    study: str = typer.Option("study-tiny", help="With a run preset: the study deployment's default config."),
    run_dir: Optional[str] = typer.Option(None, help="Default run dir of the deployments (s3://bucket/prefix on a cluster)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
    pool_type: str = typer.Option("process", help="Work pool type: process, docker or kubernetes."),
    gpu_pool: str = typer.Option("sbt-gpu", help="Pool for the pipeline, GPU stages, rounds and evaluation."),
    cpu_pool: str = typer.Option("sbt-cpu", help="Pool for the light stages (and the parents of deployments-mode runs)."),
    gpu_slots: Optional[int] = typer.Option(None, min=1, help="The GPU pool's concurrency limit: flow runs at once "
                                            "(one per GPU of the pool). Without it the pool keeps its limit."),
    image: Optional[str] = typer.Option(None, help="Worker image (docker and kubernetes pools), e.g. sbt-worker:gpu."),
    nightly: Optional[bool] = typer.Option(None, "--nightly/--no-nightly", help="Turn the nightly evaluation "
                                           "schedule on or off. Without either: a new deployment's is on, an "
                                           "existing one keeps its state."),
    result_storage: Optional[str] = typer.Option(None, help="Prefect result storage, e.g. s3://bucket/prefect-results."),
    storage_block: Optional[str] = typer.Option(None, help="RemoteFileSystem block holding S3 credentials."),
    write_prefect_yaml: Optional[Path] = typer.Option(None, help="Write the same deployments as a prefect.yaml "
                                                      "(for `prefect deploy --all`) to this path; register nothing."),
):
    """Register the work pools (if missing) and every deployment on the Prefect server in PREFECT_API_URL.

    A study config (`-c study-17m`: a YAML with `domains:`) registers the study deployment with it (and the stage
    deployments its parts use); a run preset registers the pipeline's deployments, and the study's with --study."""
    import yaml

    from sbt_core import io
    from sbt_core.config import load_run_config, load_study_config

    path = resolve_preset(config)
    tree = yaml.safe_load(path.read_text()) if path.is_file() else None
    if isinstance(tree, dict) and "domains" in tree:  # a study config
        cfg, study_cfg = None, load_study_config(path, set_)
        study_dir = run_dir or f"runs/{study_cfg.name}"
    else:
        cfg, study_cfg = load_run_config(path, set_), load_study_config(resolve_preset(study))
        study_dir = io.join(io.parent(run_dir), study_cfg.name) if run_dir else f"runs/{study_cfg.name}"
    run_config = cfg.model_dump(mode="json") if cfg else None
    study_config = study_cfg.model_dump(mode="json")
    _prefect_env()
    from deployments.register import prefect_yaml, register

    if write_prefect_yaml:
        if run_config is None:
            raise ValueError("--write-prefect-yaml writes the deployments of a run preset (-c tiny), not of a study")
        io.write_bytes(str(write_prefect_yaml), prefect_yaml(run_config, image, study=study_config).encode())
        typer.echo(f"wrote {write_prefect_yaml}")
        return
    made = register(run_config, run_dir or f"runs/{cfg.name if cfg else study_cfg.name}", study=study_config,
                    study_run_dir=study_dir, pool_type=pool_type, gpu_pool=gpu_pool, cpu_pool=cpu_pool, image=image,
                    nightly=nightly, result_storage=result_storage, storage_block=storage_block, gpu_slots=gpu_slots)
    for name, what in made.items():
        typer.echo(f"{name}: {what['id']}" + (f"  (schedule {what['schedule']})" if "schedule" in what else ""))


if __name__ == "__main__":
    app()
