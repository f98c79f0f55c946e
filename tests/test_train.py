"""SFT: the paper's masking token by token, padding, a loss golden, resume, DeepSpeed ZeRO-2."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sbt_core import build_data, io, train
from sbt_core.config import BuildDataConfig, ModelConfig, TrainConfig
from sbt_core.domains import DOMAINS
from sbt_core.domains.base import ROLES
from sbt_core.domains.countdown.format import format_prompt
from sbt_core.models import build_tokenizer

IGNORE = train.IGNORE


def supervised(example, tok):
    return [(t, lab != IGNORE) for t, lab in zip(tok.convert_ids_to_tokens(example["input_ids"]), example["labels"])]


def test_masking_on_a_hand_checked_backtrack_example():
    tok = build_tokenizer()
    ex = train.encode_example(tok, format_prompt([90, 11, 37, 95], 55), "90+95=185\n84/5=83\n<backtrack>", 128)
    marks = supervised(ex, tok)
    prompt_len = len(tok("###Question: numbers [90, 11, 37, 95]->target 55\n###Response:\n")["input_ids"])
    assert prompt_len == 27 and not any(s for _, s in marks[:prompt_len])  # prompt masked
    response = marks[prompt_len:]
    assert response == [
        ("9", True), ("0", True), ("+", True), ("9", True), ("5", True), ("=", True), ("1", True), ("8", True),
        ("5", True), ("\n", True),  # kept prefix, with its newline
        ("8", False), ("4", False), ("/", False), ("5", False), ("=", False), ("8", False), ("3", False),
        ("\n", False),  # the erroneous step and its newline
        ("<backtrack>", True), ("</s>", True),  # <backtrack> and EOS supervised
    ]
    assert [l for l in ex["labels"] if l != IGNORE] == [i for i, (_, s) in zip(ex["input_ids"], marks) if s]


def test_masking_of_an_optimal_row_and_an_empty_prefix():
    tok = build_tokenizer()
    ex = train.encode_example(tok, format_prompt([1, 2], 3), "1+2=3\nGoal Reached!", 128)
    marks = supervised(ex, tok)
    assert [t for t, s in marks if s] == ["1", "+", "2", "=", "3", "\n", "Goal Reached!", "</s>"]
    ex = train.encode_example(tok, format_prompt([1, 2], 3), "1*5=5\n<backtrack>", 128)
    assert [t for t, s in supervised(ex, tok) if s] == ["<backtrack>", "</s>"]


def test_collator_never_supervises_padding():
    tok = build_tokenizer()
    rows = [train.encode_example(tok, format_prompt([1, 2], 3), "1+2=3\nGoal Reached!", 128),
            train.encode_example(tok, format_prompt([10, 20, 30], 60), "10+20=30\n30+30=60\nGoal Reached!", 128)]
    batch = train.Collator(tok.pad_token_id)(rows)
    pad = batch["input_ids"] == tok.pad_token_id
    assert pad.any() and (batch["labels"][pad] == IGNORE).all() and (batch["attention_mask"][pad] == 0).all()


def _tiny_sft(tmp_path, data_dir, n=64):
    problems = io.read_parquet(str(data_dir / "train.parquet")).slice(0, n)
    return io.write_parquet(build_data.build(problems, BuildDataConfig(), DOMAINS["countdown"]), str(tmp_path / "sft.parquet"))


CFG = dict(batch_size=8, learning_rate=1e-3, warmup_steps=0, logging_steps=1, seed=0)
GOLDEN_LOSSES = [3.37522149, 3.26323104, 3.10631394, 3.05132031]  # measured 2026-12-02 (see the test)


def test_loss_golden_and_determinism(tmp_path, data_dir):
    sft = _tiny_sft(tmp_path, data_dir)
    runs = []
    for name in ("a", "b"):
        train.train(TrainConfig(max_steps=4, save_steps=100, **CFG), ModelConfig(size="1m"), sft, str(tmp_path / name))
        runs.append(json.loads((tmp_path / name / "train_metrics.json").read_text()))
    losses = [h["loss"] for h in runs[0]["train/loss_history"]]
    assert losses == [h["loss"] for h in runs[1]["train/loss_history"]]
    # Golden: the loss of each of the first 4 steps of a seeded 1m model on 64 problems' D_op ∪ D_back
    # (torch 2.13 CPU, fp32; the same with 1 and 2 threads). A change to the model, its initialisation,
    # the tokenizer, the masking, the data or its order moves them; update them only with a reason.
    assert losses == pytest.approx(GOLDEN_LOSSES, rel=1e-4)
    assert runs[0]["train/tokens_per_second"] > 0 and runs[0]["train/steps"] == 4


def test_resume_from_last_complete_checkpoint_equals_uninterrupted_run(tmp_path, data_dir):
    sft = _tiny_sft(tmp_path, data_dir)
    cfg = TrainConfig(max_steps=6, save_steps=3, **CFG)
    full = train.train(cfg, ModelConfig(size="1m"), sft, str(tmp_path / "full"))
    # An interrupted run: it got as far as checkpoint-3, then died mid-way through writing
    # checkpoint-6 (no trainer_state.json yet) and never wrote its final model.
    part = tmp_path / "part"
    train.train(cfg, ModelConfig(size="1m"), sft, str(part))
    shutil.rmtree(part / "model")
    os.remove(part / "checkpoints" / "checkpoint-6" / "trainer_state.json")
    assert train.last_complete_checkpoint(part / "checkpoints").endswith("checkpoint-3")
    resumed = train.train(cfg, ModelConfig(size="1m"), sft, str(part))
    metrics = json.loads((part / "train_metrics.json").read_text())
    assert metrics["train/resumed_from"].endswith("checkpoint-3")
    # What the model learnt of its first rows, by token role: every supervised token of them counted once
    roles = metrics["train/roles"]
    assert roles["all"]["tokens"] == sum(roles[r]["tokens"] for r in (*ROLES, "other")) > 0
    assert roles["result"]["tokens"] and 0 <= roles["result"]["accuracy"] <= 1
    # Training time counts both attempts: the first's up to checkpoint-3, then the second's.
    first = json.loads((part / "checkpoints" / "checkpoint-3" / train.Elapsed.FILE).read_text())["seconds"]
    both = first + metrics["train/seconds_this_attempt"]
    assert first > 0 and both <= metrics["train/seconds"] < both + 10  # + building the Trainer, saving the model
    a = load_file(os.path.join(full["model"], "model.safetensors"))
    b = load_file(os.path.join(resumed["model"], "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.integration
def test_deepspeed_zero2_one_rank_on_cpu(tmp_path, data_dir):
    """`sbt train --deepspeed` in its own process (DeepSpeed sets up a gloo process group)."""
    pytest.importorskip("deepspeed")
    sft = _tiny_sft(tmp_path, data_dir, n=32)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "flows.cli", "train", "--data", sft, "--out", str(out), "--size", "1m",
           "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", "--save-steps", "3", "--deepspeed"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((out / "checkpoints" / "checkpoint-3").glob("global_step3/*optim_states.pt"))  # ZeRO shards
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["train/steps"] == 3 and (out / "model" / "model.safetensors").exists()
    assert metrics["train/roles"]["result"]["tokens"] > 0  # probed on rank 0 with the ZeRO-2 model


@pytest.mark.integration
def test_deepspeed_zero2_two_ranks_launched_by_the_stage(tmp_path, data_dir):
    """num_processes=2: the stage itself relaunches under torchrun; two gloo ranks on CPU, ZeRO-2."""
    pytest.importorskip("deepspeed")
    sft = _tiny_sft(tmp_path, data_dir, n=32)
    out = tmp_path / "ds2"
    cmd = [sys.executable, "-m", "flows.cli", "train", "--data", sft, "--out", str(out), "--size", "1m",
           "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3", "--save-steps", "3", "--deepspeed",
           "--num-processes", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted(p.name for p in (out / "checkpoints" / "checkpoint-3").glob("global_step3/*optim_states.pt"))
    assert len(shards) == 2, shards  # one ZeRO-2 optimizer shard per rank
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["train/steps"] == 3 and (out / "model" / "model.safetensors").exists()


@pytest.mark.integration
def test_two_nodes_meet_at_an_explicit_rendezvous_endpoint_and_node_0_writes_the_model(tmp_path, data_dir):
    """Two machines' launches, here two `sbt train` processes each with its own out dir (a machine's own disk): one
    rank per node, nnodes=2, node 0's endpoint; the ranks train as one world of 2 (gloo on CPU); node 0 writes
    the model and its metrics, node 1 nothing but its own launch files."""
    import socket

    sft = _tiny_sft(tmp_path, data_dir, n=32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = lambda rank: [sys.executable, "-m", "flows.cli", "train", "--data", sft, "--out", str(tmp_path / f"node{rank}"),  # noqa: E731
                        "--size", "1m", "--max-steps", "3", "--batch-size", "4", "--lr", "1e-3", "--save-steps", "3",
                        "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(cmd(rank), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for rank in (0, 1)]
    outs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outs]
    metrics = json.loads((tmp_path / "node0" / "train_metrics.json").read_text())
    assert metrics["train/world_size"] == 2 and metrics["train/steps"] == 3
    assert (tmp_path / "node0" / "model" / "model.safetensors").exists()
    assert not (tmp_path / "node1" / "model").exists() and not (tmp_path / "node1" / "train_metrics.json").exists()
    assert "--master_addr=127.0.0.1" in outs[1][1] and "--node_rank=1" in outs[1][1]  # the launch line it logged
    with pytest.raises(ValueError, match="nnodes > 1 needs rdzv_endpoint"):
        TrainConfig(nnodes=2)
    with pytest.raises(ValueError, match="is not host:port"):
        TrainConfig(nnodes=2, rdzv_endpoint="node0")


def test_tokenised_rows_match_one_at_a_time_encoding_and_are_cached(tmp_path, data_dir):
    """`Dataset.map` in batches gives what encode_example gives row by row; a second call reuses the cache file."""
    sft = build_data.run(BuildDataConfig(), str(data_dir / "train.parquet"), str(tmp_path / "sft"))["sft"]
    tok = build_tokenizer()
    first = train.tokenised(train.sft_rows(sft), tok, 128)
    table = io.read_parquet(sft)
    for i in (0, 1, 2, len(table) - 1):
        r = table.slice(i, 1).to_pylist()[0]
        assert first[i] == train.encode_example(tok, r["prompt"], r["response"], 128)
    again = train.tokenised(train.sft_rows(sft), tok, 128)
    assert again._fingerprint == first._fingerprint and again.cache_files == first.cache_files
    assert again.cache_files and os.path.exists(again.cache_files[0]["filename"])
    assert train.tokenised(train.sft_rows(sft), tok, 64)._fingerprint != first._fingerprint


@pytest.mark.parametrize("columns,suffix", [(("nums", "target", "search_path"), ".parquet"),
                                            (("nums", "target", "search_path", "is_find", "is_backtrack"), ".jsonl")])
def test_one_step_on_the_released_layout(tmp_path, columns, suffix):
    """The paper's data, three- or five-column, imported and then trained on; and trained on as it is."""
    from sbt_core.domains.countdown import importer
    from tests.test_data import RELEASED, write_released

    src = write_released(tmp_path / f"train{suffix}", RELEASED * 4, columns)
    imported = importer.run(str(src), str(tmp_path / "imported"))["sft"]
    cfg = TrainConfig(max_steps=1, batch_size=4, learning_rate=1e-3, warmup_steps=0, save_steps=10, logging_steps=1)
    for data, out in ((imported, "from-import"), (str(src), "as-released")):
        run = train.train(cfg, ModelConfig(size="1m"), data, str(tmp_path / out))
        metrics = json.loads(open(run["metrics"]).read())
        assert metrics["train/steps"] == 1 and metrics["train/rows"] == 16 and metrics["train/final_loss"] > 0


def test_one_process_trains_on_one_device_whatever_the_worker_sees(tmp_path):
    """A worker that sees 4 GPUs runs a `num_processes: 1` SFT on the first alone: the HF Trainer wraps the model in
    `nn.DataParallel` and multiplies the batch by `n_gpu` when it is above 1 (and TRL's GRPOTrainer refuses to start)."""
    args = train.training_args(TrainConfig(batch_size=8), tmp_path)
    assert args.n_gpu == 0 and args.train_batch_size == 8  # this CPU machine
    args._n_gpu = 4  # what `TrainingArguments._setup_devices` sets where torch.cuda.device_count() is 4
    assert args.train_batch_size == 32
    assert train.one_device(args).n_gpu == 1 and args.train_batch_size == 8


def test_a_retry_on_another_worker_resumes_from_the_checkpoint_uploaded_as_it_was_written(tmp_path, data_dir, s3,
                                                                                          monkeypatch):
    """An SFT into s3:// dies after checkpoint-3 on one worker; its retry runs on another (an empty local cache): it
    downloads checkpoint-3, resumes there, ends with the weights of an uninterrupted run, and removes the uploaded
    checkpoints once the model is up."""
    from transformers import TrainerCallback

    sft = _tiny_sft(tmp_path, data_dir)
    cfg = TrainConfig(max_steps=6, save_steps=3, **CFG)
    full = train.train(cfg, ModelConfig(size="1m"), sft, str(tmp_path / "full"))
    out, key = "s3://sbt-test/train/resume", "stage-key"

    class WorkerLost(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                raise RuntimeError("worker lost")

    monkeypatch.setenv("SBT_CACHE", str(tmp_path / "worker-a"))
    with pytest.raises(RuntimeError, match="worker lost"):
        train.train(cfg, ModelConfig(size="1m"), sft, out, callbacks=[WorkerLost()], staging_key=key)
    uploaded = train.remote_checkpoints(f"{out}/checkpoints/{key}")
    assert [io.basename(u) for u in uploaded] == ["checkpoint-3"]
    monkeypatch.setenv("SBT_CACHE", str(tmp_path / "worker-b"))
    resumed = train.train(cfg, ModelConfig(size="1m"), sft, out, staging_key=key)
    metrics = io.read_json(f"{out}/train_metrics.json")
    assert metrics["train/resumed_from"].endswith("checkpoint-3") and metrics["train/steps"] == 6
    a = load_file(os.path.join(full["model"], "model.safetensors"))
    b = load_file(os.path.join(io.localize_dir(resumed["model"]), "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not io.exists(f"{out}/checkpoints")


def test_overflow_cuts_splits_or_drops_a_row_longer_than_the_context():
    tok = build_tokenizer()
    prompt, response = format_prompt([10, 20, 30], 60), "10+20=30\n30+30=60\nGoal Reached!"
    full = train.encode_batch(tok, [prompt], [response], 1000)
    n = len(full["input_ids"][0])  # 27 prompt tokens, 16 response tokens and EOS
    cut = train.encode_batch(tok, [prompt], [response], 32)
    assert cut["input_ids"] == [full["input_ids"][0][:32]] and cut["input_ids"][0][-1] != tok.eos_token_id
    split = train.encode_batch(tok, [prompt], [response], 32, "split")
    # As the released train.py: consecutive pieces of the context's length, the last ending in EOS.
    assert [len(x) for x in split["input_ids"]] == [32, n - 32]
    assert sum(split["input_ids"], []) == full["input_ids"][0] and sum(split["labels"], []) == full["labels"][0]
    assert train.encode_batch(tok, [prompt], [response], 32, "drop") == {"input_ids": [], "labels": []}
    # A piece that holds nothing supervised (the prompt alone) is left out.
    assert len(train.encode_batch(tok, [prompt], [response], 20, "split")["input_ids"]) == -(-(n - 20) // 20)


def test_chunked_numbers_keep_the_masking_of_a_backtrack_example():
    tok = build_tokenizer("countdown", "chunks")
    ex = train.encode_example(tok, format_prompt([90, 11, 37, 1995], 55), "90+1995=2085\n84/5=83\n<backtrack>", 128)
    marks = supervised(ex, tok)
    prompt_len = len(tok(format_prompt([90, 11, 37, 1995], 55))["input_ids"])
    assert not any(s for _, s in marks[:prompt_len])
    assert marks[prompt_len:] == [
        ("90", True), ("+", True), ("199", True), ("5", True), ("=", True), ("208", True), ("5", True), ("\n", True),
        ("84", False), ("/", False), ("5", False), ("=", False), ("83", False), ("\n", False),
        ("<backtrack>", True), ("</s>", True),
    ]


def test_a_trace_model_is_given_the_root_state_and_its_tokenizer_says_so(tmp_path, data_dir):
    from sbt_core.models import load, prompt_form
    from sbt_core.search.common import LM

    problems = io.read_parquet(str(data_dir / "train.parquet")).slice(0, 16)
    out = build_data.run(BuildDataConfig(recipe="dfs_trace"), str(data_dir / "train.parquet"), str(tmp_path / "d"))
    rows = io.read_parquet(out["sft"]).to_pylist()
    first = problems.to_pylist()[0]
    assert rows[0]["prompt"] == f"Current State: {first['target']}:{first['nums']}, Operations: []\n"
    assert rows[0]["response"].startswith("Exploring Operation:")
    result = train.train(TrainConfig(max_steps=1, save_steps=100, context_length=64, overflow="split", **CFG),
                         ModelConfig(size="1m", vocabulary="countdown-trace", numbers="chunks"), out["sft"],
                         str(tmp_path / "m"))
    model, tok = load(result["model"])
    assert prompt_form(tok) == "state" and "123" in tok.get_vocab()
    assert LM(model, tok).prompt(first) == rows[0]["prompt"]
    metrics = json.loads((tmp_path / "m" / "train_metrics.json").read_text())
    assert metrics["train/rows"] > metrics["train/source_rows"] and metrics["train/rows_cut"] == 0
