"""Shared fixtures: tiny generated data and a tiny model trained for a few steps (once per session)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from sbt_core.config import GenerateConfig
    from sbt_core.countdown import generate

    out = tmp_path_factory.mktemp("data")
    generate.run(GenerateConfig(num_train=3000, num_val_seen=40, num_val_new=40, seed=1, workers=1), str(out))
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir):
    """A 1m model after 150 steps of masked-loss SFT: enough to emit the format."""
    from sbt_core import build_data, train
    from sbt_core.config import BuildDataConfig, ModelConfig, TrainConfig

    root = tmp_path_factory.mktemp("trained")
    sft = build_data.run(BuildDataConfig(), str(data_dir / "train.parquet"), str(root / "sft"))["sft"]
    cfg = TrainConfig(max_steps=150, batch_size=32, learning_rate=3e-3, warmup_steps=10, save_steps=1000, logging_steps=50)
    out = train.train(cfg, ModelConfig(size="1m"), sft, str(root / "run"))
    return root, out["model"], sft
