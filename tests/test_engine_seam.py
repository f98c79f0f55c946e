"""The engine seam without vLLM: what the config accepts, how requests are grouped, and what a missing vllm says."""

from __future__ import annotations

import importlib.util

import pytest

from sbt_core.config import ConfigError, EvalConfig, SearchConfig, load_stage_config
from sbt_core.search.engines import inference_dtype, runs


def test_beam_and_reference_are_refused_on_vllm_with_the_reason():
    for decoder in ("beam", "reference"):
        with pytest.raises(ConfigError, match=rf"engine: vllm cannot run decoder '{decoder}'.*engine: hf"):
            load_stage_config(SearchConfig, None, [f"decoder={decoder}", "engine=vllm"])
    assert SearchConfig(decoder="self_backtrack", engine="vllm").engine == "vllm"


def test_an_evaluation_on_vllm_keeps_beam_on_hf_and_passes_its_settings_to_every_other_method():
    cfg = EvalConfig(engine="vllm", dtype="bfloat16", gpu_memory_utilization=0.5)
    assert cfg.search_config("beam").engine == "hf"
    search = cfg.search_config("sbt_b1_n32")
    assert (search.engine, search.dtype, search.gpu_memory_utilization) == ("vllm", "bfloat16", 0.5)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        load_stage_config(SearchConfig, None, ["gpu_memory_utilization=1.5"])


def test_equal_consecutive_prompts_become_one_request():
    assert runs([[1, 2], [1, 2], [1, 2], [3], [1, 2]]) == [(0, 3), (3, 1), (4, 1)]
    assert runs([]) == []


def test_auto_dtype_is_fp32_on_cpu():
    import torch

    assert inference_dtype("auto", "cpu") == torch.float32
    assert inference_dtype("bfloat16", "cpu") == torch.bfloat16


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_engine_vllm_without_vllm_says_what_to_install(trained):
    from sbt_core.search.run import lazy_lm

    with pytest.raises(ImportError, match=r"sbt\[vllm\]"):
        lazy_lm(trained[1], "countdown", inference={"engine": "vllm"})()
