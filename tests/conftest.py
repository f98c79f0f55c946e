"""Shared fixtures: tiny generated data and a tiny model trained for a few steps (once per session)."""

from __future__ import annotations

import os

import pytest

from flows.local_server import start as start_prefect_server
from flows.local_server import stop

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


TIERS = ("integration", "slow", "gpu")
# A test that needs one of these is integration whatever its file says: a real server, S3 over HTTP, or the
# session's trained model (150 SFT steps).
INTEGRATION_FIXTURES = {"prefect_server", "s3", "trained"}


def pytest_collection_modifyitems(config, items):
    """The unit tier is every test in no other tier (`-m unit`); `gpu` tests skip without a CUDA device."""
    import torch

    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)
        if not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from sbt_core.domains.countdown.config import GenerateConfig
    from sbt_core.domains.countdown import generate

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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real `prefect server` process for the whole test session; yields its API URL."""
    proc, url = start_prefect_server(tmp_path_factory.mktemp("prefect-home"))
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's standalone S3 server over real HTTP; yields the AWS environment that points at it."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.3)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("sbt-test")
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    stop(proc)
    log.close()
