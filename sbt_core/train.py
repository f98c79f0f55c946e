"""SFT with the paper's masked loss, through the Hugging Face Trainer.

Masking (Self-Backtracking's `train.py`): the prompt is not supervised; on a backtracking
row the erroneous step line *and its newline* are not supervised; the kept prefix,
`<backtrack>` and EOS are. Unlike the paper's code, padding is never supervised (the
paper copies labels before padding, so its pad-as-eos tokens were).

Checkpoints are written every `save_steps`; a rerun of the same call resumes from the last
complete one. `--deepspeed` trains through DeepSpeed ZeRO-2 (`assets/ds_zero2.json`).
`num_processes > 1` relaunches this module under `torchrun` (one process per GPU; gloo on
CPU), and rank 0 writes the outputs. Several machines: each runs the same stage with `nnodes`, its
`node_rank` and node 0's `rdzv_endpoint` (torchrun's static rendezvous); node 0's rank 0 writes the outputs.

Run: `sbt train --data data/sft/sft.parquet --out runs/sft --size 1m`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from sbt_core import io
from sbt_core.config import ModelConfig, TrainConfig
from sbt_core.domains import BACKTRACK
from sbt_core.models import create_tiny, load, set_prompt_form

log = logging.getLogger(__name__)
DS_CONFIG = Path(__file__).parent / "assets" / "ds_zero2.json"
IGNORE = -100


def masked_char_spans(prompt: str, response: str) -> list[tuple[int, int]]:
    """Character spans of prompt + response that are not supervised."""
    spans = [(0, len(prompt))]
    if response.endswith(BACKTRACK):
        last_nl = response.rfind("\n")  # the newline right before <backtrack>
        start = response.rfind("\n", 0, last_nl) + 1  # start of the erroneous line
        spans.append((len(prompt) + start, len(prompt) + last_nl + 1))
    return spans


def encode_batch(tokenizer, prompts, responses, context_length: int, overflow: str = "cut",
                 with_offsets: bool = False) -> dict[str, list]:
    """input_ids and labels for a batch of rows (one tokenizer call); a token is masked when it starts
    in a masked span; EOS ends every row and is supervised. A row longer than `context_length` is `cut` there,
    `split` into consecutive rows of that length (as arXiv 2504.07052's train.py does with the tokenizer's
    overflowing tokens; a piece with nothing supervised is left out), or `drop`ped. `with_offsets`: also each
    piece's source `row` (its index in the batch) and its tokens' character `offsets` (EOS at the text's end)."""
    enc = tokenizer([p + r for p, r in zip(prompts, responses)], return_offsets_mapping=True, add_special_tokens=True)
    eos = tokenizer.eos_token_id
    out: dict[str, list] = {"input_ids": [], "labels": [], **({"row": [], "offsets": []} if with_offsets else {})}
    for k, (prompt, response, ids, offsets) in enumerate(zip(prompts, responses, enc["input_ids"],
                                                             enc["offset_mapping"])):
        spans = masked_char_spans(prompt, response)
        labels = [IGNORE if any(a <= start < b for a, b in spans) else tok for tok, (start, _) in zip(ids, offsets)]
        end = len(prompt) + len(response)
        ids, labels, offsets = list(ids) + [eos], labels + [eos], list(offsets) + [(end, end)]
        if len(ids) > context_length and overflow == "drop":
            continue
        for s in range(0, len(ids) if overflow == "split" else 1, context_length):
            if any(t != IGNORE for t in labels[s:s + context_length]):
                out["input_ids"].append(ids[s:s + context_length])
                out["labels"].append(labels[s:s + context_length])
                if with_offsets:
                    out["row"].append(k)
                    out["offsets"].append(offsets[s:s + context_length])
    return out


def _masked_prefix(labels: list[int]) -> int:
    """How many tokens a row's labels mask before the first supervised one: its prompt."""
    return next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))


def encode_example(tokenizer, prompt: str, response: str, context_length: int) -> dict[str, list[int]]:
    """`encode_batch` for one row."""
    out = encode_batch(tokenizer, [prompt], [response], context_length)
    return {k: v[0] for k, v in out.items()}


def data_config(data: str) -> dict:
    """The config the manifest beside `data` records (build-data's: its `domain`, its `prompt` form), {} without one."""
    return io.manifest_beside(data).get("config") or {}


def sft_rows(data: str):
    """SFT rows (prompt, response) as a `datasets.Dataset`.

    A local Parquet file is read with `Dataset.from_parquet` (an Arrow cache keyed by the file,
    so `map` below caches too); a remote one (s3://) is read into memory; anything else (a
    folder, a JSON/JSONL/CSV file, a dataset name in the local Hugging Face cache) is loaded as
    the first paper's released Countdown layout (its `search_path` read as `response`).
    """
    import datasets

    from sbt_core import domains

    if str(data).endswith(".parquet"):
        rows = datasets.Dataset.from_parquet(str(data)) if io.is_local(data) else datasets.Dataset(io.read_parquet(data))
        if "prompt" in rows.column_names:
            return rows
        if "search_path" not in rows.column_names or not io.is_local(data):
            raise ValueError(f"{data}: SFT rows need `prompt` and `response` columns (build-data, distill-data and "
                             "import-dataset write them), or the released layout (nums, target, search_path) locally")
    return domains.released().load_released(data)


def tokenised(rows, tokenizer, context_length: int, overflow: str = "cut"):
    """`rows` tokenised with `Dataset.map`, cached under a fingerprint of the rows, the tokenizer's
    content, the context length and what happens to longer rows (a rerun on the same data reuses the cache file)."""
    fingerprint = io.config_hash({"rows": rows._fingerprint, "tokenizer": tokenizer.backend_tokenizer.to_str(),
                                  "eos": tokenizer.eos_token_id, "context_length": context_length,
                                  "overflow": overflow, "v": 3})
    return rows.map(
        lambda b: encode_batch(tokenizer, b["prompt"], b["response"], context_length, overflow),
        batched=True, batch_size=1000, remove_columns=rows.column_names, new_fingerprint=fingerprint,
        desc="tokenise",
    )


class Collator:
    """Right-pads a batch; padding gets label -100 and attention 0. Counts tokens seen."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        self.tokens += int(mask.sum())
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class TimeLimit(TrainerCallback):
    """Stops (and checkpoints) once the wall-time budget is spent."""

    def __init__(self, minutes: float | None):
        self.deadline = time.monotonic() + minutes * 60 if minutes else math.inf

    def on_step_end(self, args, state, control, **kw):
        if time.monotonic() > self.deadline:
            control.should_training_stop = True
            control.should_save = True


class Elapsed(TrainerCallback):
    """Writes the training seconds so far (over every attempt) into each checkpoint, so that a resumed run
    reports the whole run's training time, not only its last attempt's."""

    FILE = "sbt_elapsed.json"

    def __init__(self, resume: str | None):
        self.prior = json.loads((Path(resume) / self.FILE).read_text())["seconds"] if resume and \
            (Path(resume) / self.FILE).exists() else 0.0
        self.t0 = time.monotonic()

    def total(self) -> float:
        return self.prior + time.monotonic() - self.t0

    def on_save(self, args, state, control, **kw):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / self.FILE).write_text(json.dumps({"seconds": self.total()}))


class CheckpointUpload(TrainerCallback):
    """A remote run's checkpoints copied to `remote` (`<out_dir>/checkpoints/<stage key>`) as they are written, so a
    retry on another worker resumes from the last one (`restore_checkpoint`) instead of step 0. trainer_state.json
    goes last, so a remote checkpoint that has it is complete, as a local one is (`last_complete_checkpoint`); the
    newest `keep` stay there, as the Trainer keeps locally."""

    def __init__(self, remote: str, keep: int = 2):
        self.remote, self.keep = remote, keep

    def on_save(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        files = sorted((p for p in local.rglob("*") if p.is_file()),
                       key=lambda p: (p.name == "trainer_state.json", str(p)))
        for f in files:
            io.write_bytes(io.join(self.remote, local.name, *f.relative_to(local).parts), f.read_bytes())
        for old in remote_checkpoints(self.remote)[:-self.keep]:
            io.remove(old)
        log.info("checkpoint-%d uploaded to %s", state.global_step, self.remote)


def remote_checkpoints(remote: str) -> list[str]:
    """The complete checkpoints under `remote`, oldest first."""
    if not io.exists(remote):
        return []
    fs, path = io._fs(remote)
    names = [p.rstrip("/").rpartition("/")[2] for p in fs.ls(path, detail=False)]
    steps = sorted(int(n.removeprefix("checkpoint-")) for n in names
                   if n.startswith("checkpoint-") and n.removeprefix("checkpoint-").isdigit())
    uris = [io.join(remote, f"checkpoint-{step}") for step in steps]
    return [uri for uri in uris if io.exists(io.join(uri, "trainer_state.json"))]


def restore_checkpoint(remote: str, ckpt_dir: Path) -> str | None:
    """Download the newest complete checkpoint under `remote` into `ckpt_dir` when this machine has no complete one
    of its own (a retry landed on another worker); returns the local checkpoint to resume from, or None."""
    local = last_complete_checkpoint(ckpt_dir)
    newest = (remote_checkpoints(remote) or [None])[-1]
    if newest is None or (local and int(local.rpartition("-")[2]) >= int(newest.rpartition("-")[2])):
        return local
    target = ckpt_dir / io.basename(newest)
    tmp = ckpt_dir / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    fs, path = io._fs(newest)
    for p in fs.find(path):
        dest = tmp / p[len(path.rstrip("/")) + 1:]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(io.read_bytes(io.join(newest, p[len(path.rstrip("/")) + 1:])))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    log.info("resuming from %s (written by an earlier attempt elsewhere)", newest)
    return str(target)


def last_complete_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint whose trainer state was written (the Trainer writes it last)."""
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def _single_process_distributed_env() -> None:
    """DeepSpeed wants a process group even for one rank; gloo on CPU, nccl on GPU."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def one_device(args: TrainingArguments) -> TrainingArguments:
    """One process trains on one GPU, the first it sees, however many the worker has: never the HF Trainer's
    implicit `nn.DataParallel`, which would make the batch, the step count and `train/flops` depend on the machine
    (and which TRL's GRPOTrainer refuses). More GPUs are a launch of `num_processes` ranks, one GPU each."""
    if args.n_gpu > 1:  # (a rank of a distributed launch already has n_gpu 1)
        log.info("%d GPUs visible to one process: training on cuda:0 alone (set num_processes to use more)", args.n_gpu)
        args._n_gpu = 1
    return args


def training_args(cfg: TrainConfig, out_dir: Path, progress_bar: bool = True) -> TrainingArguments:
    if cfg.deepspeed:
        _single_process_distributed_env()
    extra = {"gradient_checkpointing": True} if cfg.gradient_checkpointing else {}
    return one_device(TrainingArguments(
        **extra,
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16 and torch.cuda.is_available(),  # bf16 on this CPU runs ~600x slower than fp32
        deepspeed=str(DS_CONFIG) if cfg.deepspeed else None,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        disable_tqdm=not progress_bar,
    ))


def train(cfg: TrainConfig, model_cfg: ModelConfig, data_uri: str, out_dir: str, callbacks=(),
          staging_key: str = "", progress_bar: bool = True) -> dict[str, str]:
    """Stage entry: SFT on `data_uri` (rows with prompt and response); writes out_dir/model.

    A remote `out_dir` (s3://...) trains in a local staging folder, uploads each checkpoint as it is
    written (`CheckpointUpload`: a retry here or on another worker resumes from the last one) and the
    model, metrics and manifest at the end.
    `staging_key` (the stage's cache key) names that folder, so a changed config never resumes
    another run's checkpoints.
    """
    remote = not io.is_local(out_dir)
    out = io.staging_dir(out_dir, staging_key) if remote else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / "model"
    init = model_cfg.path or str(out / "init")
    if model_cfg.size and not (out / "init").exists():
        create_tiny(model_cfg.size, out / "init.tmp", seed=model_cfg.seed, vocabulary=model_cfg.vocabulary,
                    max_positions=max(256, cfg.context_length), numbers=model_cfg.numbers)
        os.replace(out / "init.tmp", out / "init")
    remote_ckpts = io.join(out_dir, "checkpoints", staging_key or "run") if remote else None
    if remote and "LOCAL_RANK" not in os.environ:  # (the launcher, or the only process: once per machine)
        restore_checkpoint(remote_ckpts, out / "checkpoints")
    if (cfg.num_processes > 1 or cfg.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        return _launch(cfg, model_cfg, data_uri, out_dir, out, staging_key, progress_bar)
    # fp32 master weights always; `bf16` means bf16 autocast on a GPU. (Loading the weights in
    # bf16 made AdamW update bf16 parameters directly, where small updates round away.)
    model, tokenizer = load(init, dtype=torch.float32)
    built = data_config(data_uri)
    set_prompt_form(tokenizer, built.get("prompt") or "question")  # the model keeps the prompt form it learnt
    overflow = cfg.overflow or "cut"
    rows = sft_rows(data_uri)
    dataset = tokenised(rows, tokenizer, cfg.context_length, overflow)
    # A row that fits ends in EOS; one cut at the context does not (its end is never learnt); a split one ends in
    # EOS at its last piece only; a dropped one is gone.
    cut = sum(ids[-1] != tokenizer.eos_token_id for ids in dataset["input_ids"]) if overflow == "cut" else 0
    if cut:
        log.warning("%d of %d rows are longer than context_length %d and were cut (their ends, EOS included, are "
                    "not trained on): raise context_length (build-data's manifest has the data's token lengths), or "
                    "set overflow: split", cut, len(dataset), cfg.context_length)
    elif len(dataset) != len(rows):
        log.info("overflow %s: %d rows of %d tokens at most from %d SFT rows", overflow, len(dataset),
                 cfg.context_length, len(rows))
    # Tokens after the prompt (EOS included) of the longest row: what an evaluation of this model must let it write.
    longest_response = max((len(labels) - _masked_prefix(labels) for labels in dataset["labels"]), default=0)
    collator = Collator(tokenizer.pad_token_id)
    resume = last_complete_checkpoint(out / "checkpoints")
    elapsed = Elapsed(resume)
    trainer = Trainer(
        model=model,
        args=training_args(cfg, out, progress_bar),
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[TimeLimit(cfg.max_minutes), elapsed, *([CheckpointUpload(remote_ckpts)] if remote else []),
                   *callbacks],
    )
    if not progress_bar:  # the caller shows progress (`callbacks`): no bar, and no printed loss dicts either
        quiet_trainer(trainer)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.monotonic() - t0
    tmp = out / "model.tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # every rank calls it (DeepSpeed gathers); rank 0 writes
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    losses = [h for h in trainer.state.log_history if "loss" in h]
    params = model.num_parameters()
    # Training compute 6·N·D over the whole run (a resumed run's collator saw only its own part):
    # D = rows the optimiser steps consumed x mean tokens per row (prompt included; attention left out).
    rows_seen = min(trainer.state.global_step * cfg.batch_size * cfg.grad_accum * trainer.args.world_size,
                    math.ceil(cfg.epochs * len(dataset)) if cfg.max_steps < 0 else 10**15)
    mean_tokens = sum(len(ids) for ids in dataset["input_ids"]) / max(len(dataset), 1)
    metrics = {
        "train/steps": trainer.state.global_step,
        "train/final_loss": losses[-1]["loss"] if losses else None,
        "train/mean_loss": result.training_loss,
        "train/seconds": elapsed.total(),  # every attempt's training time (a resumed run included)
        "train/seconds_this_attempt": seconds,
        "train/tokens": collator.tokens,  # this attempt's
        "train/tokens_per_second": collator.tokens / seconds if seconds else None,
        "train/rows": len(dataset),  # after `overflow` (split pieces, dropped rows)
        "train/source_rows": len(rows),
        "train/rows_cut": cut,  # longer than context_length, with overflow `cut`
        "train/longest_response": longest_response,
        "train/parameters": params,
        "train/world_size": trainer.args.world_size,  # ranks over every node
        "train/flops": 6.0 * params * rows_seen * mean_tokens,
        "train/resumed_from": resume,
        "train/loss_history": [{"step": h["step"], "loss": h["loss"]} for h in losses],
    }
    metrics["train/roles"] = _roles(model, tokenizer, rows, built.get("domain"), cfg.context_length)
    model_uri = io.upload_dir(final, io.join(out_dir, "model")) if remote else str(final)
    if remote:  # the model is there: the uploaded checkpoints have done their work
        io.remove(remote_ckpts)
    metrics_uri = io.write_json(metrics, io.join(str(out_dir), "train_metrics.json"))
    io.write_manifest(
        str(out_dir), "train", {"train": cfg.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json")},
        [data_uri], {"metrics": metrics_uri},
    )
    log.info("train: %d steps, %.0f tokens/s", trainer.state.global_step, metrics["train/tokens_per_second"] or 0)
    return {"model": model_uri, "metrics": metrics_uri}


PROBE_ROWS = 200  # SFT rows the trained model is probed on (`train/roles`)


def _roles(model, tokenizer, rows, domain: str | None, context_length: int) -> dict:
    """What the model learnt of its own first rows, by token role (`probe.role_accuracy`): a low loss made of
    copying shows here as a low `result` accuracy."""
    from sbt_core import domains, probe

    part = rows.select(range(min(PROBE_ROWS, len(rows)))).select_columns(["prompt", "response"]).to_list()
    return probe.role_accuracy(model, tokenizer, domains.get(domain or domains.DEFAULT), part,
                               context_length=context_length)


def quiet_trainer(trainer) -> None:
    """No Trainer output on the terminal: its loss dicts printed per logging step (train_metrics.json keeps the
    loss history), and the chatter of what it imported (DeepSpeed's logger prints to stdout)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from sbt_core import chatter

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    chatter.quiet_libraries()


def _launch(cfg: TrainConfig, model_cfg: ModelConfig, data_uri: str, out_dir: str, out: Path,
            staging_key: str, progress_bar: bool = True) -> dict[str, str]:
    """Run this stage under torchrun with cfg.num_processes ranks here (of cfg.nnodes machines' ranks meeting at
    cfg.rdzv_endpoint); global rank 0 writes the outputs, so another node returns none."""
    import subprocess
    import sys

    spec = out / "launch.json"
    spec.write_text(json.dumps({"train": cfg.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json"),
                                "data_uri": str(data_uri), "out_dir": str(out_dir),
                                "staging_key": staging_key, "progress_bar": progress_bar}))
    cmd = [sys.executable, "-m", "torch.distributed.run", *rendezvous_args(cfg),
           f"--nproc_per_node={cfg.num_processes}", "-m", "sbt_core.train", str(spec)]
    log.info("launching %d training processes: %s", cfg.num_processes, " ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if cfg.node_rank:
        log.info("node %d of %d done: node 0 wrote the outputs to its out dir", cfg.node_rank, cfg.nnodes)
        return {}
    model_uri = io.join(str(out_dir), "model") if not io.is_local(out_dir) else str(out / "model")
    return {"model": model_uri, "metrics": io.join(str(out_dir), "train_metrics.json")}


def rendezvous_args(cfg: TrainConfig) -> list[str]:
    """torchrun's options for where ranks meet: --standalone on one machine, else a static rendezvous at node 0."""
    if cfg.rdzv_endpoint is None:
        return ["--standalone"]
    host, _, port = cfg.rdzv_endpoint.rpartition(":")
    return [f"--nnodes={cfg.nnodes}", f"--node_rank={cfg.node_rank}", f"--master_addr={host}", f"--master_port={port}"]


if __name__ == "__main__":  # a torchrun rank (see _launch)
    import sys

    logging.basicConfig(level=logging.INFO)
    args = json.loads(Path(sys.argv[1]).read_text())
    train(TrainConfig(**args["train"]), ModelConfig(**args["model"]), args["data_uri"], args["out_dir"],
          staging_key=args.get("staging_key", ""), progress_bar=args.get("progress_bar", True))
