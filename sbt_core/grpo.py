"""GRPO from the verifier's reward (arXiv 2504.07052's RL stage), through TRL's `GRPOTrainer`.

Each step draws `prompts_per_step` train problems, samples `rollouts` completions of each, scores
them with the domain's strict verifier (1 or 0) and takes one clipped policy-gradient step on the
group-normalised rewards, with a KL penalty (`beta`) against the SFT model the stage starts from.
An optional format reward (1 when the response states an answer the domain can read) is a
separate reward function with its own weight and its own log line (`rewards/format/mean`).

The completion's text keeps `<backtrack>` (TRL's own decode drops special tokens), so a rollout
that backtracks is judged as written. Rollouts go through TRL's transformers generation on CPU
or one GPU; `use_vllm` hands them to vLLM on a GPU worker that has it installed.

The model is saved like an SFT model (safetensors and tokenizer, `models.load` reads it).
Checkpoints are written every `save_steps`; a rerun of the same call resumes from the last
complete one (weights, optimiser, RNG and the prompt order).

Run: `sbt grpo --model runs/tiny/sft-op/model --data runs/tiny/data/train.parquet --out runs/grpo`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from sbt_core import domains, io
from sbt_core.config import GRPOConfig
from sbt_core.domains import Domain
from sbt_core.models import load, prompt_form
from sbt_core.train import (
    CheckpointUpload,
    TimeLimit,
    last_complete_checkpoint,
    one_device,
    quiet_trainer,
    restore_checkpoint,
)

log = logging.getLogger(__name__)
HISTORY_KEYS = {"reward": "reward", "reward_std": "reward_std", "kl": "kl", "entropy": "entropy",
                "completions/mean_length": "completion_length", "rewards/correct/mean": "correct",
                "rewards/format/mean": "format", "loss": "loss"}


def completion_text(tokenizer, ids) -> str:
    """A completion's text as the verifier reads it: EOS and pad dropped, `<backtrack>` kept."""
    drop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False)


def reward_functions(domain: Domain, tokenizer, format_weight: float = 0.0) -> tuple[list, list[float]]:
    """TRL reward functions and their weights: `correct` (the strict verifier) and, when weighted, `format`.

    TRL passes the dataset's other columns (the domain's problem columns) as lists, one per completion.
    """

    def problems(n: int, columns: dict) -> list[dict]:
        return [{c: columns[c][i] for c in domain.columns} for i in range(n)]

    def correct(prompts, completions, completion_ids, **columns) -> list[float]:
        return [float(domain.verify(p, completion_text(tokenizer, ids)).correct)
                for p, ids in zip(problems(len(completion_ids), columns), completion_ids)]

    def format(prompts, completions, completion_ids, **columns) -> list[float]:  # noqa: A001 (TRL's metric name)
        return [float(domain.answer_key(completion_text(tokenizer, ids)) is not None) for ids in completion_ids]

    funcs, weights = [correct], [1.0]
    if format_weight > 0:
        funcs.append(format)
        weights.append(format_weight)
    return funcs, weights


def prompts_dataset(domain: Domain, data_uri: str, limit: int | None = None, form: str = "question"):
    """The train problems as a `datasets.Dataset`: `prompt` (the domain's prompt text in the model's `form`) and the
    problem columns."""
    import datasets

    table = io.read_parquet(data_uri)
    if limit:
        table = table.slice(0, limit)
    rows = table.select(list(domain.columns)).to_pylist()
    return datasets.Dataset.from_list([{"prompt": domain.prompt(p, form), **p} for p in rows])


def trl_args(cfg: GRPOConfig, out: Path, max_completion_length: int, weights: list[float], progress_bar: bool = True):
    """`trl.GRPOConfig` for `cfg`: one optimiser step per `prompts_per_step x rollouts` completions."""
    from trl import GRPOConfig as TRLConfig

    completions = cfg.prompts_per_step * cfg.rollouts
    micro = cfg.micro_batch or completions
    vllm = dict(use_vllm=True, vllm_mode=cfg.vllm_mode,
                vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization) if cfg.use_vllm else {}
    return one_device(TRLConfig(
        **vllm,
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions // micro,
        num_generations=cfg.rollouts,
        max_completion_length=max_completion_length,
        temperature=cfg.temperature,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        beta=cfg.beta,
        epsilon=cfg.clip,
        entropy_coef=cfg.entropy_coef,
        loss_type=cfg.loss_type,
        reward_weights=weights,
        max_steps=cfg.steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=cfg.logging_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16 and torch.cuda.is_available(),  # fp32 on CPU: bf16 there is ~600x slower
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
        report_to=[],
        disable_tqdm=not progress_bar,
    ))


def _check_vllm(cfg: GRPOConfig) -> None:
    if cfg.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ValueError("grpo.use_vllm is set but vLLM is not installed on this worker: `pip install vllm` "
                           "(GPU workers only), or set grpo.use_vllm=false for TRL's transformers generation")
    if cfg.use_vllm and not torch.cuda.is_available():
        raise ValueError("grpo.use_vllm needs a GPU; this worker has none (set grpo.use_vllm=false)")


def history(log_history: list[dict]) -> list[dict]:
    """Per logged step: mean reward, its spread, KL, entropy, completion length, per-function rewards, loss."""
    out = []
    for h in log_history:
        if "reward" in h:
            out.append({"step": h["step"], **{name: h[k] for k, name in HISTORY_KEYS.items() if k in h}})
    return out


def train(cfg: GRPOConfig, model_uri: str, data_uri: str, out_dir: str, *, domain: str = domains.DEFAULT,
          max_completion_length: int = 64, callbacks=(), staging_key: str = "", progress_bar: bool = True) -> dict[str, str]:
    """Stage entry: GRPO on the train problems in `data_uri`, starting from `model_uri`; writes out_dir/model.

    A remote `out_dir` (s3://...) trains in a local staging folder and uploads the model, metrics and
    manifest at the end; each checkpoint is uploaded as it is written (`<out_dir>/checkpoints/<staging_key>/`,
    as SFT's), so a retry here or on another worker resumes from the last one. `staging_key` (the stage's
    cache key) names both, so a changed config never resumes another run's checkpoints.
    """
    from trl import GRPOTrainer

    _check_vllm(cfg)
    d = domains.get(domain)
    length = cfg.max_completion_length or max_completion_length
    remote = not io.is_local(out_dir)
    out = io.staging_dir(out_dir, staging_key) if remote else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remote_ckpts = io.join(out_dir, "checkpoints", staging_key or "run") if remote else None
    if remote:
        restore_checkpoint(remote_ckpts, out / "checkpoints")
    model, tokenizer = load(model_uri, dtype=torch.float32)
    funcs, weights = reward_functions(d, tokenizer, cfg.format_reward)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=trl_args(cfg, out, length, weights, progress_bar),
                          train_dataset=prompts_dataset(d, data_uri, cfg.problems, prompt_form(tokenizer)), processing_class=tokenizer,
                          callbacks=[TimeLimit(cfg.max_minutes),
                                     *([CheckpointUpload(remote_ckpts)] if remote else []), *callbacks])
    if not progress_bar:  # the caller shows progress (`callbacks`)
        quiet_trainer(trainer)
    resume = last_complete_checkpoint(out / "checkpoints")
    if resume:
        log.info("grpo: resuming from %s", resume)
    t0 = time.monotonic()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.monotonic() - t0
    tmp, final = out / "model.tmp", out / "model"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    steps = history(trainer.state.log_history)
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    losses = [h["loss"] for h in steps if "loss" in h]
    metrics = {
        "train/steps": trainer.state.global_step,
        "train/seconds": seconds,
        "train/tokens": tokens[-1] if tokens else None,  # prompt + completion tokens through the policy
        "train/tokens_per_second": tokens[-1] / seconds if tokens and seconds else None,
        "train/final_loss": losses[-1] if losses else None,
        "train/resumed_from": resume,
        "grpo/rollouts": trainer.state.global_step * cfg.prompts_per_step * cfg.rollouts,
        "grpo/max_completion_length": length,
        "grpo/first_reward": steps[0]["reward"] if steps else None,
        "grpo/last_reward": steps[-1]["reward"] if steps else None,
        "grpo/history": steps,
    }
    model_uri_out = io.upload_dir(final, io.join(out_dir, "model")) if remote else str(final)
    if remote:  # the model is there: the uploaded checkpoints have done their work
        io.remove(remote_ckpts)
    metrics_uri = io.write_json(metrics, io.join(str(out_dir), "grpo_metrics.json"))
    io.write_manifest(str(out_dir), "grpo", {"grpo": cfg.model_dump(mode="json"), "domain": domain,
                                             "max_completion_length": length},
                      [model_uri, data_uri], {"metrics": metrics_uri})
    log.info("grpo: %d steps in %.0f s, reward %s -> %s", trainer.state.global_step, seconds,
             metrics["grpo/first_reward"], metrics["grpo/last_reward"])
    return {"model": model_uri_out, "metrics": metrics_uri}
