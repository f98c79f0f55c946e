"""The stage commands of `sbt` (one per stage, each Parquet in and Parquet out), without Prefect.

There is one command line, `sbt` (`python -m flows.cli`): `flows/cli.py` adds the flow commands
(`run`, `status`, `gc`, `study`, ...) to this app, so this module has no entry point of its own.

Every command writes its outputs and a `manifest.json` into `--out`, shows progress on long
work, and fails with a one-line message (exit code 2), not a traceback, on bad input.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sbt_core import domains
from sbt_core.config import (DEFAULT_METHODS, BuildDataConfig, ModelConfig, SearchConfig, TrainConfig,
                             format_validation_error)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Self-backtracking and search traces on Countdown and Sudoku: data, SFT, search.")
DOMAIN_HELP = f"Task domain: {', '.join(domains.DOMAINS)}."
err = Console(stderr=True)


def clean_errors(fn):
    """Known bad input ends in a message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            return fn(*args, **kwargs)
        except ValidationError as e:
            err.print(f"[red]error:[/red] invalid configuration\n{format_validation_error(e)}")
        except (ValueError, FileNotFoundError, KeyError) as e:
            err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)

    return wrapper


def _progress(total: int, label: str):
    p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                 disable=not sys.stderr.isatty())
    task = p.add_task(label, total=total)
    return p, lambda *a: p.advance(task, a[-1] if a else 1)


CONFIG_FILE = typer.Option(None, "--config", help="YAML file of the stage's config fields (see sbt_core.config).")
SET = typer.Option([], "--set", help="Override one config field: --set field=value (YAML value; repeatable).")


@app.command()
@clean_errors
def generate(
    out: str = typer.Option(..., help="Output folder (local or s3://)."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
    num_train: Optional[int] = typer.Option(None, help="Problems in train (Countdown 500,000; Sudoku 100,000)."),
    num_val_seen: Optional[int] = typer.Option(None, help="Countdown: problems in val_seen (1,000)."),
    num_val_new: Optional[int] = typer.Option(None, help="Countdown: problems in val_new (1,000)."),
    num_val: Optional[int] = typer.Option(None, help="Sudoku: puzzles in val (1,000)."),
    seed: Optional[int] = typer.Option(None, help="Seed (0)."),
    num_numbers: Optional[int] = typer.Option(None, help="Countdown: numbers per problem (4)."),
    number_max: Optional[int] = typer.Option(None, help="Countdown: largest number (99)."),
    size: Optional[int] = typer.Option(None, help="Sudoku: grid size, 4, 6 or 9 (9)."),
    givens: Optional[int] = typer.Option(None, help="Sudoku: givens to dig down to (default: a minimal puzzle)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (0, the default: one per core)."),
    config: Optional[str] = CONFIG_FILE,
    set_: list[str] = SET,
):
    """Generate problems with their solutions: Countdown train/val_seen/val_new, Sudoku train/val."""
    from sbt_core.config import load_stage_config

    d = domains.get(domain)
    flags = dict(seed=seed, workers=workers, num_train=num_train, num_val_seen=num_val_seen, num_val_new=num_val_new,
                 num_numbers=num_numbers, number_max=number_max, num_val=num_val, size=size, givens=givens)
    # Each domain takes the options its generator has; one of another domain's is a mistake, not a no-op.
    foreign = [k for k, v in flags.items() if v is not None and k not in d.GenerateConfig.model_fields]
    if foreign:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in foreign)}: not an option of the {domain} "
                         f"generator (its fields: {', '.join(f for f in d.GenerateConfig.model_fields if f != 'domain')})")
    cfg = load_stage_config(d.GenerateConfig, config, set_, **flags)
    p, advance = _progress(cfg.total, "generate")
    with p:
        uris = d.generate(cfg, out, progress=advance)
    typer.echo("\n".join(f"{k}: {v}" for k, v in uris.items()))


@app.command("build-data")
@clean_errors
def build_data(
    data: str = typer.Option(..., help="train.parquet of `sbt generate` (or its folder)."),
    out: str = typer.Option(..., help="Output folder."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
    recipe: Optional[str] = typer.Option(None, help="optimal, self_backtrack (default), dfs_trace, mix_trace, "
                                         "think_trace, direct."),
    seed: Optional[int] = typer.Option(None, help="Seed (0)."),
    error_ratio: Optional[str] = typer.Option(None, help="Weights of the domain's three D_back error types (1:2:2)."),
    backtrack_per_optimal: Optional[float] = typer.Option(None, help="D_back rows per D_op row (1.0)."),
    config: Optional[str] = CONFIG_FILE,
    set_: list[str] = SET,
):
    """SFT rows by recipe: D_op, D_op ∪ D_back, search traces or the direct path."""
    from sbt_core import build_data as stage
    from sbt_core.config import load_stage_config

    ratio = None
    if error_ratio is not None:
        ratio = tuple(float(x) for x in error_ratio.split(":"))
        if len(ratio) != 3:
            raise ValueError("--error-ratio needs three weights, like 1:2:2")
    cfg = load_stage_config(BuildDataConfig, config, set_, recipe=recipe, seed=seed, error_type_ratio=ratio,
                            backtrack_per_optimal=backtrack_per_optimal)
    src = data if data.endswith(".parquet") else f"{data.rstrip('/')}/train.parquet"
    typer.echo(stage.run(cfg, src, out, domain)["sft"])


@app.command("import-dataset")
@clean_errors
def import_dataset(
    src: str = typer.Option(..., help="The paper's released data: a Parquet/JSON/JSONL/CSV file, a folder, or "
                            "a dataset name in the local Hugging Face cache (yangxw/countdown-backtracking)."),
    out: str = typer.Option(..., help="Output folder."),
    split: str = typer.Option("train", help="Split to import (train, validation)."),
):
    """Import the paper's released Countdown rows into our Parquet schema (through `datasets`)."""
    uris = domains.get("countdown").import_released(src, out, split)
    typer.echo("\n".join(f"{k}: {v}" for k, v in uris.items()))


@app.command()
@clean_errors
def train(
    data: str = typer.Option(..., help="SFT rows (sft.parquet of build-data, import-dataset or distill-data), or "
                             "the paper's released layout as it is (a file, a folder or a cached dataset name)."),
    out: str = typer.Option(..., help="Run folder: checkpoints/, model/, train_metrics.json."),
    size: Optional[str] = typer.Option("1m", help="Tiny from-scratch model: 1m, 3m or 17m."),
    vocabulary: Optional[str] = typer.Option(None, help="Tiny model's vocabulary: countdown (default), "
                                             "countdown-trace (dfs/mix/think/direct recipes) or sudoku."),
    model_path: Optional[str] = typer.Option(None, help="Local HF model folder (instead of --size)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (1e-5)."),
    epochs: Optional[float] = typer.Option(None, help="Epochs (3)."),
    max_steps: Optional[int] = typer.Option(None, help="Optimiser steps (-1, the default: epochs)."),
    max_minutes: Optional[float] = typer.Option(None, help="Wall-time limit."),
    batch_size: Optional[int] = typer.Option(None, help="Per-device batch (16)."),
    warmup_steps: Optional[int] = typer.Option(None, help="Warm-up steps (1)."),
    save_steps: Optional[int] = typer.Option(None, help="Checkpoint interval (500)."),
    seed: Optional[int] = typer.Option(None, help="Seed (42)."),
    deepspeed: Optional[bool] = typer.Option(None, "--deepspeed", help="Use DeepSpeed ZeRO-2."),
    bf16: Optional[bool] = typer.Option(None, "--bf16", help="bf16 (GPU only)."),
    num_processes: Optional[int] = typer.Option(None, help="Processes (one per GPU); >1 launches torchrun "
                                                "(gloo on CPU)."),
    config: Optional[str] = CONFIG_FILE,
    set_: list[str] = typer.Option([], "--set", help="Override any TrainConfig field: --set context_length=512 "
                                   "(repeatable)."),
):
    """Fine-tune with the paper's masked loss; resumes from the last checkpoint in --out."""
    from sbt_core import train as stage
    from sbt_core.config import load_stage_config

    cfg = load_stage_config(TrainConfig, config, set_, learning_rate=lr, epochs=epochs, max_steps=max_steps,
                            max_minutes=max_minutes, batch_size=batch_size, warmup_steps=warmup_steps,
                            save_steps=save_steps, seed=seed, deepspeed=deepspeed, bf16=bf16,
                            num_processes=num_processes)
    model_cfg = ModelConfig(size=None if model_path else size, path=model_path,
                            vocabulary=None if model_path else vocabulary)
    out_uris = stage.train(cfg, model_cfg, data, out)
    typer.echo("\n".join(f"{k}: {v}" for k, v in out_uris.items()))


@app.command()
@clean_errors
def grpo(
    model: str = typer.Option(..., help="The SFT model folder GRPO starts from (its `model/`)."),
    data: str = typer.Option(..., help="Train problems (a generate split, e.g. data/train.parquet)."),
    out: str = typer.Option(..., help="Run folder: checkpoints/, model/, grpo_metrics.json."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
    set_: list[str] = typer.Option([], "--set", help="GRPOConfig field=value, e.g. --set steps=50 "
                                   "--set learning_rate=1e-4 (see `sbt_core.config.GRPOConfig`)."),
    max_completion_length: int = typer.Option(64, help="Rollout token limit when the config sets none."),
):
    """GRPO from the domain's verifier (TRL); resumes from the last checkpoint in --out."""
    from sbt_core import grpo as stage
    from sbt_core.config import GRPOConfig, load_stage_config

    cfg = load_stage_config(GRPOConfig, None, set_)
    out_uris = stage.train(cfg, model, data, out, domain=domain, max_completion_length=max_completion_length)
    typer.echo("\n".join(f"{k}: {v}" for k, v in out_uris.items()))


@app.command()
@clean_errors
def search(
    model: str = typer.Option(..., help="Model folder."),
    data: str = typer.Option(..., help="Problems (a split's parquet)."),
    out: str = typer.Option(..., help="Output folder: results.parquet, shards/, manifest.json."),
    decoder: Optional[str] = typer.Option(None, help="greedy, beam, sample, best_of_n, majority, self_backtrack "
                                          "(default), reference."),
    n: Optional[int] = typer.Option(None, help="N: samples / beams (32)."),
    b: Optional[int] = typer.Option(None, help="b: backtrack budget (1)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (0.7)."),
    selector: Optional[str] = typer.Option(None, help="Best-of-N selector: logprob (default) or oracle."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Token limit per continuation (64)."),
    batch_rows: Optional[int] = typer.Option(None, help="Sequences per model batch (2048)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first LIMIT problems."),
    seed: Optional[int] = typer.Option(None, help="Seed (4)."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
    config: Optional[str] = CONFIG_FILE,
    set_: list[str] = typer.Option([], "--set", help="Override any SearchConfig field (repeatable)."),
):
    """Run one decoder over a split; resumes from finished shards."""
    from sbt_core.config import load_stage_config
    from sbt_core.io import read_parquet
    from sbt_core.search import run as stage

    cfg = load_stage_config(SearchConfig, config, set_, decoder=decoder, n=n, backtrack_budget=b,
                            temperature=temperature, selector=selector, max_new_tokens=max_new_tokens,
                            batch_rows=batch_rows, seed=seed)
    total = min(limit or 10**12, len(read_parquet(data)))
    p, advance = _progress(total, f"search {cfg.decoder}")
    with p:
        typer.echo(stage.run(cfg, model, data, out, domain=domain, limit=limit, progress=advance)["results"])


@app.command()
@clean_errors
def evaluate(
    model: str = typer.Option(..., help="Model folder."),
    data: str = typer.Option(..., help="Data folder (Countdown: val_seen/val_new.parquet; Sudoku: val.parquet)."),
    out: str = typer.Option(..., help="Output folder: summary.json, summary.md, per-method results."),
    methods: str = typer.Option(",".join(DEFAULT_METHODS),
                                help="Comma-separated method names (see sbt_core.config.METHODS)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Problems per split (default: all)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Token limit per continuation (64)."),
    seed: Optional[int] = typer.Option(None, help="Seed (4)."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
    config: Optional[str] = CONFIG_FILE,
    set_: list[str] = typer.Option([], "--set", help="Override any EvalConfig field: --set temperature=1.0 "
                                   "(repeatable)."),
):
    """Accuracy on the domain's evaluation splits (strict and paper verifier modes) for several decoders."""
    from sbt_core import evaluate as stage
    from sbt_core.config import EvalConfig, load_stage_config
    from sbt_core.io import read_parquet

    cfg = load_stage_config(EvalConfig, config, set_, limit=limit, max_new_tokens=max_new_tokens, seed=seed)
    # All problems unless a limit is given (EvalConfig's 200 is the pipeline's default, not this command's).
    limit = cfg.limit if "limit" in cfg.model_fields_set else None
    cfgs = {m: cfg.search_config(m) for m in methods.split(",") if m}
    splits = cfg.splits or domains.get(domain).eval_splits
    per_split = [min(limit or 10**12, len(read_parquet(f"{data.rstrip('/')}/{s}.parquet"))) for s in splits]
    p, advance = _progress(len(cfgs) * sum(per_split), "evaluate")
    with p:
        uris = stage.run(model, data, out, cfgs, domain=domain, limit=limit, splits=splits, progress=advance)
    typer.echo(open(uris["summary_md"]).read() if "://" not in uris["summary_md"] else uris["summary"])


@app.command("distill-data")
@clean_errors
def distill_data(
    results: str = typer.Option(..., help="results.parquet of `sbt search` on the train split."),
    out: str = typer.Option(..., help="Output folder."),
    transductive: bool = typer.Option(False, "--transductive", help="Allow self-training on an evaluation split."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
):
    """Verified-correct search outputs as a new SFT set (expert iteration)."""
    from sbt_core import distill as stage

    typer.echo(stage.run(results, out, domain=domain, transductive=transductive)["sft"])
