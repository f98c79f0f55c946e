"""The stage commands of `sbt` (one per stage, each Parquet in and Parquet out), without Prefect.

There is one command line, `sbt` (`python -m flows.cli`): `flows/cli.py` adds the flow commands
(`run`, `status`, `gc`, `study`, ...) to this app, so this module has no entry point of its own.

Every command writes its outputs and a `manifest.json` into `--out`, shows progress on long
work, and fails with a one-line message (exit code 2), not a traceback, on bad input.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import types
import typing
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sbt_core import domains
from sbt_core.config import (BuildDataConfig, EvalConfig, GRPOConfig, ModelConfig, SearchConfig, TrainConfig,
                             format_validation_error)
from sbt_core.search import registry

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Self-backtracking and search traces on Countdown and Sudoku: data, SFT, search.")
DOMAIN_HELP = f"Task domain: {', '.join(domains.DOMAINS)}."
DATA_DOMAIN_HELP = f"Task domain: {', '.join(domains.DOMAINS)} (default: the one the data's manifest names)."
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
        except (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
            err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)

    return wrapper


def data_domain(given: str | None, data: str) -> str:
    """The domain of `data` (a stage's folder, or a file in one): the one its manifest's config names; `given` must
    agree with it. Without a manifest that names one: `given`, else the default domain."""
    from sbt_core import io

    folder = data if not str(data).endswith((".parquet", ".json", ".jsonl", ".csv")) else io.parent(data)
    manifest = io.join(folder, io.MANIFEST)
    recorded = None
    if io.exists(manifest):
        config = io.read_json(manifest).get("config") or {}
        recorded = config.get("domain") if isinstance(config, dict) else None
    if given and recorded and given != recorded:
        raise ValueError(f"--domain {given}: {data} holds {recorded} data (its manifest says so)")
    return domains.get(given or recorded or domains.DEFAULT).name


def _built_data(data: str) -> dict:
    """What build-data's manifest beside `data` says of its rows: `vocabulary` and `longest` (tokens of prompt,
    response and EOS in that vocabulary); {} without one."""
    from sbt_core import io

    record = io.manifest_beside(data)
    if not record:
        return {}
    lengths = (record.get("stats") or {}).get("token_lengths") or {}
    return {"vocabulary": (record.get("config") or {}).get("vocabulary"), "longest": (lengths.get("all") or {}).get("max")}


def _quiet() -> None:
    """Library warnings and DeepSpeed's accelerator line off the terminal of a command that loads a model."""
    from sbt_core import chatter

    chatter.quiet_libraries()


def _response_length(cfg, model: str):
    """`cfg` with `max_new_tokens` raised to the longest response `model` was trained on (its SFT's
    train_metrics.json beside the model folder), unless the option was given; a line says so."""
    from sbt_core import io

    metrics = io.join(io.parent(model.rstrip("/")), "train_metrics.json")
    if "max_new_tokens" in cfg.model_fields_set or not io.exists(metrics):
        return cfg
    longest = io.read_json(metrics).get("train/longest_response") or 0
    if longest <= cfg.max_new_tokens:
        return cfg
    err.print(f"max_new_tokens: {longest} (the longest response {model} was trained on; the default "
              f"{cfg.max_new_tokens} would cut answers)")
    return cfg.model_copy(update={"max_new_tokens": longest})


def _progress(total: int, label: str):
    p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                 disable=not sys.stderr.isatty())
    task = p.add_task(label, total=total)
    return p, lambda *a: p.advance(task, a[-1] if a else 1)


def config_options(models, choose=None, what: str = "", aliases: dict[str, tuple[str, ...]] | None = None, skip: tuple[str, ...] = ()):
    """Give a command one option per scalar field of its config model (`--field-name`, helped by the field's
    description and default: nothing re-typed), plus `--config FILE` and `--set field=value` for every field.

    The command receives `cfg`, validated by `config.load_stage_config` (file, then flags, then `--set`).
    `models` may be several models (a domain's generator settings): the options are their union, and
    `choose(kwargs)` picks the one this call validates into (`what(kwargs)` names it in errors); an option
    of another model is an error, not a no-op.
    """
    from sbt_core.config import load_stage_config

    models = models if isinstance(models, (list, tuple)) else [models]
    fields = {}
    for model in models:
        for name, f in model.model_fields.items():
            if name not in skip and name not in fields and (kind := _scalar(f.annotation)) is not None:
                fields[name] = (kind, f)

    def decorate(fn):
        options = []
        for name, (kind, f) in fields.items():
            choices = typing.get_args(f.annotation) if typing.get_origin(f.annotation) is typing.Literal else ()
            about = f.description + (f" One of: {', '.join(map(str, choices))}." if choices else "")
            default = "" if len(models) > 1 else f" (default: {f.default})"
            options.append(inspect.Parameter(
                f"_opt_{name}", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str if kind is tuple else kind],
                default=typer.Option(None, f"--{name.replace('_', '-')}", *(aliases or {}).get(name, ()),
                                     help=f"{about}{default}", show_default=False)))
        options += [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                      default=CONFIG_FILE),
                    inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, annotation=list[str], default=SET)]

        @functools.wraps(fn)
        def command(**kwargs):
            flags = {name: _flag_value(name, kwargs.pop(f"_opt_{name}"), kind) for name, (kind, _) in fields.items()}
            model = choose(kwargs) if choose else models[0]
            foreign = [k for k, v in flags.items() if v is not None and k not in model.model_fields]
            if foreign:
                raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in foreign)}: not an option of "
                                 f"{what(kwargs)} (its fields: {', '.join(f for f in model.model_fields if f not in skip)})")
            cfg = load_stage_config(model, kwargs.pop("config"), kwargs.pop("set_"), **flags)
            return fn(cfg, **kwargs)

        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "cfg"]
        command.__signature__ = inspect.Signature(own + options)
        return command

    return decorate


def _scalar(annotation):
    """The CLI type of a field (int, float, bool or str; a Literal's values' type), None for lists, tuples, dicts."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _scalar(args[0]) if len(args) == 1 else None
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0])
    if typing.get_origin(annotation) is tuple and all(a in (int, float) for a in args):
        return tuple  # numbers separated by ':' (`--error-type-ratio 1:2:2`)
    return annotation if annotation in (int, float, bool, str) else None


def _flag_value(name: str, value, kind):
    if kind is not tuple or value is None:
        return value
    try:
        return tuple(float(x) for x in value.split(":"))
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')}: numbers separated by ':' (like 1:2:2), not {value!r}") from None


CONFIG_FILE = typer.Option(None, "--config", help="YAML file of the stage's config fields (see sbt_core.config).")
SET = typer.Option([], "--set", help="Override one config field: --set field=value (YAML value; repeatable).")


@app.command()
@clean_errors
@config_options([d.GenerateConfig for d in domains.DOMAINS.values()], choose=lambda kw: domains.get(kw["domain"]).GenerateConfig,
                what=lambda kw: f"the {kw['domain']} generator", skip=("domain",))
def generate(
    cfg,
    out: str = typer.Option(..., help="Output folder (local or s3://)."),
    domain: str = typer.Option(domains.DEFAULT, help=DOMAIN_HELP),
):
    """Generate problems with their solutions: Countdown train/val_seen/val_new, Sudoku train/val."""
    p, advance = _progress(cfg.total, "generate")
    with p:
        uris = domains.get(domain).generate(cfg, out, progress=advance)
    typer.echo("\n".join(f"{k}: {v}" for k, v in uris.items()))


@app.command("build-data")
@clean_errors
@config_options(BuildDataConfig, aliases={"error_type_ratio": ("--error-ratio",)})
def build_data(
    cfg,
    data: str = typer.Option(..., help="train.parquet of `sbt generate` (or its folder)."),
    out: str = typer.Option(..., help="Output folder."),
    domain: Optional[str] = typer.Option(None, help=DATA_DOMAIN_HELP),
):
    """SFT rows by recipe: D_op, D_op ∪ D_back, search traces or the direct path."""
    from sbt_core import build_data as stage

    src = data if data.endswith(".parquet") else f"{data.rstrip('/')}/train.parquet"
    typer.echo(stage.run(cfg, src, out, data_domain(domain, src))["sft"])


@app.command("import-dataset")
@clean_errors
def import_dataset(
    src: str = typer.Option(..., help="The paper's released data: a Parquet/JSON/JSONL/CSV file, a folder, or "
                            "a dataset name in the local Hugging Face cache (yangxw/countdown-backtracking)."),
    out: str = typer.Option(..., help="Output folder."),
    split: str = typer.Option("train", help="Split to import (train, validation)."),
):
    """Import the paper's released Countdown rows into our Parquet schema (through `datasets`)."""
    uris = domains.released().import_released(src, out, split)
    typer.echo("\n".join(f"{k}: {v}" for k, v in uris.items()))


@app.command()
@clean_errors
@config_options(TrainConfig, aliases={"learning_rate": ("--lr",)})
def train(
    cfg,
    data: str = typer.Option(..., help="SFT rows (sft.parquet of build-data, import-dataset or distill-data), or "
                             "the paper's released layout as it is (a file, a folder or a cached dataset name)."),
    out: str = typer.Option(..., help="Run folder: checkpoints/, model/, train_metrics.json."),
    size: Optional[str] = typer.Option("1m", help="Tiny from-scratch model: 1m, 3m or 17m."),
    vocabulary: Optional[str] = typer.Option(None, help="Tiny model's vocabulary (default: the one build-data "
                                             "wrote the rows in, from its manifest; else the default domain's)."),
    model_path: Optional[str] = typer.Option(None, help="Local HF model folder (instead of --size)."),
):
    """Fine-tune with the paper's masked loss; resumes from the last checkpoint in --out."""
    from sbt_core import train as stage

    _quiet()  # the Trainer's own bar and loss lines stay: they are this command's progress display
    built = _built_data(data)  # build-data's manifest: the rows' vocabulary and token lengths
    if not model_path and vocabulary is None and built.get("vocabulary"):
        vocabulary = built["vocabulary"]
    model_cfg = ModelConfig(size=None if model_path else size, path=model_path,
                            vocabulary=None if model_path else vocabulary)
    longest = built.get("longest") if not model_path and vocabulary == built.get("vocabulary") else None
    if "context_length" not in cfg.model_fields_set and longest and longest > cfg.context_length:
        err.print(f"context_length: {longest} (the data's longest row, from its manifest; the default "
                  f"{cfg.context_length} would cut rows)")
        cfg = cfg.model_copy(update={"context_length": longest})
    out_uris = stage.train(cfg, model_cfg, data, out)
    typer.echo("\n".join(f"{k}: {v}" for k, v in out_uris.items()))


@app.command()
@clean_errors
@config_options(GRPOConfig)
def grpo(
    cfg,
    model: str = typer.Option(..., help="The SFT model folder GRPO starts from (its `model/`)."),
    data: str = typer.Option(..., help="Train problems (a generate split, e.g. data/train.parquet)."),
    out: str = typer.Option(..., help="Run folder: checkpoints/, model/, grpo_metrics.json."),
    domain: Optional[str] = typer.Option(None, help=DATA_DOMAIN_HELP),
    max_completion_length: int = typer.Option(64, help="Rollout token limit when the config sets none."),
):
    """GRPO from the domain's verifier (TRL); resumes from the last checkpoint in --out."""
    from sbt_core import grpo as stage

    _quiet()
    out_uris = stage.train(cfg, model, data, out, domain=data_domain(domain, data),
                           max_completion_length=max_completion_length)
    typer.echo("\n".join(f"{k}: {v}" for k, v in out_uris.items()))


@app.command(help=f"Run one decoder over a split; resumes from finished shards. Decoders: {registry.help_text()}.")
@clean_errors
@config_options(SearchConfig, aliases={"backtrack_budget": ("--b",)})
def search(
    cfg,
    model: str = typer.Option(..., help="Model folder."),
    data: str = typer.Option(..., help="Problems (a split's parquet)."),
    out: str = typer.Option(..., help="Output folder: results.parquet, shards/, manifest.json."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first LIMIT problems."),
    domain: Optional[str] = typer.Option(None, help=DATA_DOMAIN_HELP),
):
    from sbt_core.io import read_parquet
    from sbt_core.search import run as stage

    domain = data_domain(domain, data)
    _quiet()
    cfg = _response_length(cfg, model)
    total = min(limit or 10**12, len(read_parquet(data)))
    p, advance = _progress(total, f"search {cfg.decoder}")
    with p:
        typer.echo(stage.run(cfg, model, data, out, domain=domain, limit=limit, progress=advance)["results"])


@app.command()
@clean_errors
@config_options(EvalConfig)
def evaluate(
    cfg,
    model: str = typer.Option(..., help="Model folder."),
    data: str = typer.Option(..., help="Data folder (Countdown: val_seen/val_new.parquet; Sudoku: val.parquet)."),
    out: str = typer.Option(..., help="Output folder: summary.json, summary.md, per-method results."),
    methods: str = typer.Option(",".join(registry.DEFAULT_METHODS),
                                help=f"Comma-separated method names: {', '.join(registry.METHODS)}."),
    domain: Optional[str] = typer.Option(None, help=DATA_DOMAIN_HELP),
):
    """Accuracy on the domain's evaluation splits (strict and paper verifier modes) for several decoders."""
    from sbt_core import evaluate as stage
    from sbt_core.io import read_parquet

    domain = data_domain(domain, data)
    # All problems unless a limit is given (EvalConfig's 200 is the pipeline's default, not this command's).
    limit = cfg.limit if "limit" in cfg.model_fields_set else None
    _quiet()
    cfg = _response_length(cfg, model)
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
    domain: Optional[str] = typer.Option(None, help=DATA_DOMAIN_HELP),
):
    """Verified-correct search outputs as a new SFT set (expert iteration)."""
    from sbt_core import distill as stage

    typer.echo(stage.run(results, out, domain=data_domain(domain, results), transductive=transductive)["sft"])


@app.command()
@clean_errors
def probe(
    model: str = typer.Option(..., help="Model folder (a stage's sft-*/model)."),
    data: str = typer.Option(..., help="SFT rows (a build-data stage's sft.parquet)."),
    rows: int = typer.Option(200, min=1, help="How many rows, from the first."),
    context_length: Optional[int] = typer.Option(None, min=8, help="Tokens read per row (default: the model's)."),
    out: Optional[str] = typer.Option(None, help="Also write the figures to this JSON file."),
    domain: Optional[str] = typer.Option(None, help=DATA_DOMAIN_HELP),
):
    """Teacher-forced next-token accuracy and loss on SFT rows by token role: which step (choice), what it gives
    (result), a claim about the search (verdict), a restatement (copy). What a low mean loss is made of."""
    from sbt_core import io
    from sbt_core import probe as stage

    _quiet()
    result = stage.run(model, data, rows=rows, context_length=context_length, domain=data_domain(domain, data))
    if out:
        io.write_json(result, out)
    typer.echo(f"{result['rows']} rows of {data} ({result['domain']}, {result['context_length']} tokens each at most)")
    typer.echo(stage.markdown(result["roles"]))
