"""GRPO through TRL: the verifier's reward, the TRL settings, training, saving, and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sbt_core import grpo, io, train
from sbt_core.config import ConfigError, GRPOConfig, load_run_config
from sbt_core.domains import BACKTRACK, DOMAINS
from sbt_core.models import build_tokenizer, load

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(steps=3, prompts_per_step=4, rollouts=4, learning_rate=1e-3, save_steps=2, format_reward=1.0,
            problems=64, seed=0)


def _problem(data_dir) -> dict:
    return io.read_parquet(str(data_dir / "train.parquet")).slice(0, 1).to_pylist()[0]


def test_rewards_are_the_strict_verifier_and_a_labelled_format_reward(data_dir):
    d, tok = DOMAINS["countdown"], build_tokenizer("countdown")
    problem = _problem(data_dir)
    funcs, weights = grpo.reward_functions(d, tok, format_weight=0.1)
    assert [f.__name__ for f in funcs] == ["correct", "format"] and weights == [1.0, 0.1]
    right = problem["solution"]
    lines = right.split("\n")
    wrong = right.replace(lines[0], lines[0][:-1] + ("1" if lines[0][-1] != "1" else "2"), 1)
    backtracked = lines[0] + "\n" + BACKTRACK
    completions = [right, wrong, backtracked]
    ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions]
    columns = {c: [problem[c]] * 3 for c in d.columns}
    # TRL's own decode drops special tokens; the reward reads the ids, so `<backtrack>` stays.
    assert grpo.completion_text(tok, ids[2]).endswith(BACKTRACK)
    correct, fmt = (f(prompts=[""] * 3, completions=[""] * 3, completion_ids=ids, **columns) for f in funcs)
    assert correct == [1.0, 0.0, 0.0]
    assert fmt[0] == 1.0 and fmt[2] == 0.0


def test_trl_settings_follow_the_config(tmp_path):
    cfg = GRPOConfig(prompts_per_step=8, rollouts=4, micro_batch=8, beta=0.001, clip=0.2, temperature=0.7,
                     learning_rate=1e-6, steps=10)
    args = grpo.trl_args(cfg, tmp_path, 96, [1.0])
    assert args.num_generations == 4 and args.per_device_train_batch_size == 8
    assert args.gradient_accumulation_steps == 4  # 32 completions per optimiser step, 8 at a time
    assert (args.beta, args.epsilon, args.temperature, args.learning_rate) == (0.001, 0.2, 0.7, 1e-6)
    assert args.max_completion_length == 96 and args.max_steps == 10 and not args.use_vllm
    assert args.lr_scheduler_type == "constant" and args.loss_type == "grpo" and args.entropy_coef == 0.001


def test_vllm_asked_for_without_vllm_installed_is_a_clear_error(tmp_path, trained, data_dir):
    with pytest.raises(ValueError, match="vLLM is not installed|needs a GPU"):
        grpo.train(GRPOConfig(use_vllm=True, **FAST), trained[1], str(data_dir / "train.parquet"),
                   str(tmp_path / "g"))
    assert not (tmp_path / "g").exists()  # refused before any work
    args = grpo.trl_args(GRPOConfig(use_vllm=True, vllm_mode="server"), tmp_path, 64, [1.0])
    assert args.use_vllm and args.vllm_mode == "server"


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"grpo: .*micro_batch \(3\) must divide"):
        load_run_config(ROOT / "configs" / "smoke.yaml", ["grpo.micro_batch=3"])
    with pytest.raises(ConfigError, match=r"grpo.models: 'nope' is not one of models"):
        load_run_config(ROOT / "configs" / "smoke.yaml", ["grpo.models=[nope]"])
    with pytest.raises(ConfigError, match=r"grpo.rollouts: Input should be greater than or equal to 2"):
        load_run_config(ROOT / "configs" / "smoke.yaml", ["grpo.rollouts=1"])


def test_grpo_trains_saves_a_loadable_model_and_a_rerun_resumes(tmp_path, trained, data_dir):
    out = tmp_path / "g"
    made = grpo.train(GRPOConfig(**FAST), trained[1], str(data_dir / "train.parquet"), str(out),
                      max_completion_length=40)
    metrics = json.loads(Path(made["metrics"]).read_text())
    assert metrics["train/steps"] == 3 and metrics["grpo/rollouts"] == 3 * 4 * 4
    history = metrics["grpo/history"]
    assert [h["step"] for h in history] == [1, 2, 3]
    assert all(0 <= h["reward"] <= 2 and 0 <= h["correct"] <= 1 and 0 <= h["format"] <= 1 for h in history)
    model, _ = load(made["model"])  # saved like an SFT model
    tuned, base = load_file(os.path.join(made["model"], "model.safetensors")), load_file(
        os.path.join(trained[1], "model.safetensors"))
    assert tuned.keys() == base.keys() and any(not torch.equal(tuned[k], base[k]) for k in base)
    assert json.loads((out / "manifest.json").read_text())["stage"] == "grpo"
    again = grpo.train(GRPOConfig(**FAST), trained[1], str(data_dir / "train.parquet"), str(out),
                       max_completion_length=40)  # a rerun of a finished call resumes at its end
    assert json.loads(Path(again["metrics"]).read_text())["train/resumed_from"].endswith("checkpoint-3")


def test_a_grpo_retry_on_another_worker_resumes_from_its_uploaded_checkpoint(tmp_path, trained, data_dir, s3,
                                                                             monkeypatch):
    """GRPO into s3:// dies after checkpoint-2 on one worker; the retry on another (an empty local cache) downloads
    checkpoint-2, resumes there, and removes the uploaded checkpoints once the model is up."""
    from transformers import TrainerCallback

    out, key, data = "s3://sbt-test/grpo/resume", "stage-key", str(data_dir / "train.parquet")

    class WorkerLost(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise RuntimeError("worker lost")

    monkeypatch.setenv("SBT_CACHE", str(tmp_path / "worker-a"))
    with pytest.raises(RuntimeError, match="worker lost"):
        grpo.train(GRPOConfig(**FAST), trained[1], data, out, max_completion_length=40, callbacks=[WorkerLost()],
                   staging_key=key)
    assert [io.basename(u) for u in train.remote_checkpoints(f"{out}/checkpoints/{key}")] == ["checkpoint-2"]
    monkeypatch.setenv("SBT_CACHE", str(tmp_path / "worker-b"))
    made = grpo.train(GRPOConfig(**FAST), trained[1], data, out, max_completion_length=40, staging_key=key)
    metrics = io.read_json(made["metrics"])
    assert metrics["train/resumed_from"].endswith("checkpoint-2") and metrics["train/steps"] == 3
    assert io.exists(f"{out}/model/model.safetensors") and not io.exists(f"{out}/checkpoints")


def test_kill_9_during_grpo_resumes_from_the_last_checkpoint(tmp_path, trained, data_dir):
    out = tmp_path / "killed"

    def cmd(steps: int) -> list[str]:
        settings = {**FAST, "steps": steps, "save_steps": 4}
        return [sys.executable, "-m", "flows.cli", "grpo", "--model", trained[1], "--data",
                str(data_dir / "train.parquet"), "--out", str(out), "--max-completion-length", "40",
                *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd(200), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "GRPO ended before its checkpoint"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "model").exists(), "the kill landed after GRPO finished"
    # The rerun asks for 8 steps: it resumes at checkpoint-4 (the next one, 8, needs 4 more steps).
    done = subprocess.run(cmd(8), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "grpo_metrics.json").read_text())
    assert metrics["train/resumed_from"].endswith("checkpoint-4") and metrics["train/steps"] == 8
    assert [h["step"] for h in metrics["grpo/history"]] == list(range(1, 9))  # 1-4 from the checkpoint's log
    load(out / "model")
