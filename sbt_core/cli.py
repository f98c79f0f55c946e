"""The `sbt` command line: one command per stage, each Parquet in and Parquet out.

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
                             format_validation_error, method_config)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Self-backtracking and search traces on Countdown and Sudoku: data, SFT, search.")
DOMAIN_HELP = f"Task domain: {', '.join(domains.DOMAINS)}."
err = Console(stderr=True)


def _clean_errors(fn):
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


@app.command()
@_clean_errors
def generate(
    out: str = typer.Option(..., help="Output folder (local or s3://)."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
    num_train: Optional[int] = typer.Option(None, help="Problems in train (Countdown 500,000; Sudoku 100,000)."),
    num_val_seen: int = typer.Option(1000, help="Countdown: problems in val_seen."),
    num_val_new: int = typer.Option(1000, help="Countdown: problems in val_new."),
    num_val: int = typer.Option(1000, help="Sudoku: puzzles in val."),
    seed: int = typer.Option(0, help="Seed."),
    num_numbers: int = typer.Option(4, help="Countdown: numbers per problem."),
    number_max: int = typer.Option(99, help="Countdown: largest number."),
    size: int = typer.Option(9, help="Sudoku: grid size, 4, 6 or 9."),
    givens: Optional[int] = typer.Option(None, help="Sudoku: givens to dig down to (default: a minimal puzzle)."),
    workers: int = typer.Option(0, help="Worker processes (0: one per core)."),
):
    """Generate problems with their solutions: Countdown train/val_seen/val_new, Sudoku train/val."""
    d = domains.get(domain)
    opts = dict(seed=seed, workers=workers, num_train=num_train, num_val_seen=num_val_seen, num_val_new=num_val_new,
                num_numbers=num_numbers, number_max=number_max, num_val=num_val, size=size, givens=givens)
    # Each domain takes the options its generator has (the others belong to another domain).
    cfg = d.GenerateConfig(**{k: v for k, v in opts.items() if k in d.GenerateConfig.model_fields and v is not None})
    p, advance = _progress(cfg.total, "generate")
    with p:
        uris = d.generate(cfg, out, progress=advance)
    typer.echo("\n".join(f"{k}: {v}" for k, v in uris.items()))


@app.command("build-data")
@_clean_errors
def build_data(
    data: str = typer.Option(..., help="train.parquet of `sbt generate` (or its folder)."),
    out: str = typer.Option(..., help="Output folder."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
    recipe: str = typer.Option("self_backtrack", help="optimal, self_backtrack, dfs_trace, mix_trace, think_trace, direct."),
    seed: int = typer.Option(0, help="Seed."),
    error_ratio: str = typer.Option("1:2:2", help="Weights of the domain's three D_back error types."),
    backtrack_per_optimal: float = typer.Option(1.0, help="D_back rows per D_op row."),
):
    """SFT rows by recipe: D_op, D_op ∪ D_back, search traces or the direct path."""
    from sbt_core import build_data as stage

    ratio = tuple(float(x) for x in error_ratio.split(":"))
    if len(ratio) != 3:
        raise ValueError("--error-ratio needs three weights, like 1:2:2")
    cfg = BuildDataConfig(recipe=recipe, seed=seed, error_type_ratio=ratio, backtrack_per_optimal=backtrack_per_optimal)
    src = data if data.endswith(".parquet") else f"{data.rstrip('/')}/train.parquet"
    typer.echo(stage.run(cfg, src, out, domain)["sft"])


@app.command("import-dataset")
@_clean_errors
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
@_clean_errors
def train(
    data: str = typer.Option(..., help="SFT rows (sft.parquet of build-data, import-dataset or distill-data), or "
                             "the paper's released layout as it is (a file, a folder or a cached dataset name)."),
    out: str = typer.Option(..., help="Run folder: checkpoints/, model/, train_metrics.json."),
    size: Optional[str] = typer.Option("1m", help="Tiny from-scratch model: 1m, 3m or 17m."),
    vocabulary: Optional[str] = typer.Option(None, help="Tiny model's vocabulary: countdown (default), "
                                             "countdown-trace (dfs/mix/think/direct recipes) or sudoku."),
    model_path: Optional[str] = typer.Option(None, help="Local HF model folder (instead of --size)."),
    lr: float = typer.Option(1e-5, help="Peak learning rate."),
    epochs: float = typer.Option(3, help="Epochs."),
    max_steps: int = typer.Option(-1, help="Optimiser steps (-1: epochs)."),
    max_minutes: Optional[float] = typer.Option(None, help="Wall-time limit."),
    batch_size: int = typer.Option(16, help="Per-device batch."),
    warmup_steps: int = typer.Option(1, help="Warm-up steps."),
    save_steps: int = typer.Option(500, help="Checkpoint interval."),
    seed: int = typer.Option(42, help="Seed."),
    deepspeed: bool = typer.Option(False, "--deepspeed", help="Use DeepSpeed ZeRO-2."),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 (GPU only)."),
    num_processes: int = typer.Option(1, help="Processes (one per GPU); >1 launches torchrun (gloo on CPU)."),
):
    """Fine-tune with the paper's masked loss; resumes from the last checkpoint in --out."""
    from sbt_core import train as stage

    cfg = TrainConfig(learning_rate=lr, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes,
                      batch_size=batch_size, warmup_steps=warmup_steps, save_steps=save_steps, seed=seed,
                      deepspeed=deepspeed, bf16=bf16, num_processes=num_processes)
    model_cfg = ModelConfig(size=None if model_path else size, path=model_path,
                            vocabulary=None if model_path else vocabulary)
    out_uris = stage.train(cfg, model_cfg, data, out)
    typer.echo("\n".join(f"{k}: {v}" for k, v in out_uris.items()))


@app.command()
@_clean_errors
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
    from sbt_core.config import GRPOConfig, config_from_overrides

    cfg = config_from_overrides(GRPOConfig, set_)
    out_uris = stage.train(cfg, model, data, out, domain=domain, max_completion_length=max_completion_length)
    typer.echo("\n".join(f"{k}: {v}" for k, v in out_uris.items()))


def _search_config(decoder, n, b, temperature, selector, max_new_tokens, batch_rows, seed) -> SearchConfig:
    return SearchConfig(decoder=decoder, n=n, backtrack_budget=b, temperature=temperature, selector=selector,
                        max_new_tokens=max_new_tokens, batch_rows=batch_rows, seed=seed)


@app.command()
@_clean_errors
def search(
    model: str = typer.Option(..., help="Model folder."),
    data: str = typer.Option(..., help="Problems (a split's parquet)."),
    out: str = typer.Option(..., help="Output folder: results.parquet, shards/, manifest.json."),
    decoder: str = typer.Option("self_backtrack", help="greedy, beam, sample, best_of_n, majority, self_backtrack, reference."),
    n: int = typer.Option(32, help="N: samples / beams."),
    b: int = typer.Option(1, help="b: backtrack budget."),
    temperature: float = typer.Option(0.7, help="Sampling temperature."),
    selector: str = typer.Option("logprob", help="Best-of-N selector: logprob or oracle."),
    max_new_tokens: int = typer.Option(64, help="Token limit per continuation."),
    batch_rows: int = typer.Option(2048, help="Sequences per model batch."),
    limit: Optional[int] = typer.Option(None, help="Only the first LIMIT problems."),
    seed: int = typer.Option(4, help="Seed."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
):
    """Run one decoder over a split; resumes from finished shards."""
    from sbt_core.io import read_parquet
    from sbt_core.search import run as stage

    cfg = _search_config(decoder, n, b, temperature, selector, max_new_tokens, batch_rows, seed)
    total = min(limit or 10**12, len(read_parquet(data)))
    p, advance = _progress(total, f"search {decoder}")
    with p:
        typer.echo(stage.run(cfg, model, data, out, domain=domain, limit=limit, progress=advance)["results"])


@app.command()
@_clean_errors
def evaluate(
    model: str = typer.Option(..., help="Model folder."),
    data: str = typer.Option(..., help="Data folder (Countdown: val_seen/val_new.parquet; Sudoku: val.parquet)."),
    out: str = typer.Option(..., help="Output folder: summary.json, summary.md, per-method results."),
    methods: str = typer.Option(",".join(DEFAULT_METHODS),
                                help="Comma-separated method names (see sbt_core.config.METHODS)."),
    limit: Optional[int] = typer.Option(None, help="Problems per split."),
    max_new_tokens: int = typer.Option(64, help="Token limit per continuation."),
    seed: int = typer.Option(4, help="Seed."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
):
    """Accuracy on the domain's evaluation splits (strict and paper verifier modes) for several decoders."""
    from sbt_core import evaluate as stage

    from sbt_core.io import read_parquet

    cfgs = {m: method_config(m, max_new_tokens=max_new_tokens, seed=seed) for m in methods.split(",") if m}
    splits = domains.get(domain).eval_splits
    per_split = [min(limit or 10**12, len(read_parquet(f"{data.rstrip('/')}/{s}.parquet"))) for s in splits]
    p, advance = _progress(len(cfgs) * sum(per_split), "evaluate")
    with p:
        uris = stage.run(model, data, out, cfgs, domain=domain, limit=limit, progress=advance)
    typer.echo(open(uris["summary_md"]).read() if "://" not in uris["summary_md"] else uris["summary"])


@app.command("distill-data")
@_clean_errors
def distill_data(
    results: str = typer.Option(..., help="results.parquet of `sbt search` on the train split."),
    out: str = typer.Option(..., help="Output folder."),
    transductive: bool = typer.Option(False, "--transductive", help="Allow self-training on an evaluation split."),
    domain: str = typer.Option("countdown", help=DOMAIN_HELP),
):
    """Verified-correct search outputs as a new SFT set (expert iteration)."""
    from sbt_core import distill as stage

    typer.echo(stage.run(results, out, domain=domain, transductive=transductive)["sft"])


if __name__ == "__main__":
    app()
