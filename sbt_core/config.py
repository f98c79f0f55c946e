"""One pydantic model per stage. Every field has a default and a description.

Unknown keys are refused; errors name the field path (see `format_validation_error`).
Validators do no I/O.
"""

from __future__ import annotations

import fnmatch
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from sbt_core.domains import DEFAULT, DOMAINS
from sbt_core.domains.base import StrictConfig as _Config
from sbt_core.recipes import RECIPES
from sbt_core.search.registry import DECODERS, METHODS

# `generate:` is the settings of the run's domain, told apart by their `domain` field.
GenerateConfig = Annotated[Union[tuple(d.GenerateConfig for d in DOMAINS.values())], Field(discriminator="domain")]


class BuildDataConfig(_Config):
    recipe: str = Field("self_backtrack", description="What the SFT rows are (`recipes.RECIPES`): optimal, "
                        "self_backtrack, dfs_trace, mix_trace, think_trace or direct.")
    seed: int = Field(0, description="Seed for prefix lengths, error types and erroneous steps.")
    error_type_ratio: tuple[float, float, float] = Field(
        (1, 2, 2), description="Relative weights of the domain's three D_back error types, in its order: "
        "Countdown exploration : computational : rule-violation; Sudoku exploration : conflict : given."
    )
    backtrack_per_optimal: float = Field(
        1.0, ge=0, description="D_back rows per D_op row (1.0 is D_op:D_back = 1:1; 2.0 is 1:2)."
    )
    computational_at_target: float = Field(
        0.0, ge=0, le=1, description="Share of computational errors made at the last step with the target as the "
        "wrong result (a small model's typical false claim); 0 is the paper's data."
    )
    trace_format: str | None = Field(
        None, description="Text of the trace recipes (the domain's `trace_formats`): Countdown `released` (the text "
        "of arXiv 2504.07052's generator) or `sbt` (ours: mean mult heuristic, larger operand first, a closing line "
        "on failure); None: the domain's first (Countdown released, Sudoku sbt)."
    )
    prompt: Literal["question", "state"] | None = Field(
        None, description="What the model is given: `question` (the `###Question:` header) or `state` (a trace's "
        "first line, the root `Current State`: the released evaluation's prompt); None: `state` for trace recipes "
        "where the domain writes one, else `question`."
    )

    @model_validator(mode="after")
    def _ratio(self):
        if any(w < 0 for w in self.error_type_ratio) or sum(self.error_type_ratio) <= 0:
            raise ValueError("error_type_ratio needs non-negative weights with a positive sum")
        return self


class ModelConfig(_Config):
    size: Literal["1m", "3m", "17m"] | None = Field(
        "1m", description="Named tiny from-scratch model; None when `path` names a pretrained model."
    )
    path: str | None = Field(None, description="Local path of a Hugging Face causal LM and tokenizer.")
    seed: int = Field(0, description="Seed for the from-scratch initialisation.")
    vocabulary: str | None = Field(None, description="The from-scratch tokenizer's vocabulary (a domain's: "
                                   "countdown, countdown-trace, sudoku); None: countdown.")
    numbers: Literal["digits", "chunks"] = Field(
        "digits", description="How the from-scratch tokenizer writes numbers: `digits` (one a token) or `chunks` "
        "(up to three digits a token, as Llama-3's tokenizer, which the first paper's model read).")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.size is None) == (self.path is None):
            raise ValueError("set exactly one of `size` (from scratch) or `path` (pretrained)")
        return self


class TrainConfig(_Config):
    seed: int = Field(42, description="Seed for data order and dropout (the paper: 42).")
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate (the paper: 1e-5).")
    lr_scheduler: str = Field("cosine", description="Hugging Face scheduler name (the paper: cosine).")
    warmup_steps: int = Field(1, ge=0, description="Warm-up steps (the paper: 1).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (the paper: 0.01).")
    epochs: float = Field(3, gt=0, description="Epochs over the data (the paper: 3).")
    max_steps: int = Field(-1, description="Stop after this many optimiser steps (-1: use epochs).")
    max_minutes: float | None = Field(None, gt=0, description="Stop training after this wall time.")
    batch_size: int = Field(16, ge=1, description="Per-device micro-batch (the paper: 16).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    context_length: int = Field(128, ge=8, description="Truncation length in tokens (the paper: 128).")
    overflow: Literal["cut", "split", "drop"] | None = Field(
        None, description="A row longer than context_length: `cut` (its end, EOS included, never trained on), "
        "`split` into rows of context_length (arXiv 2504.07052's train.py: the tokenizer's overflowing tokens), or "
        "`drop`; None: `split` for trace recipes, `cut` otherwise (a run's models), `cut` for `sbt train`."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping (the paper's DeepSpeed config: 1.0).")
    save_steps: int = Field(500, ge=1, description="Checkpoint every this many steps (resume point).")
    logging_steps: int = Field(50, ge=1, description="Log loss every this many steps.")
    bf16: bool = Field(False, description="bf16 mixed precision (GPU only; fp32 on CPU).")
    deepspeed: bool = Field(False, description="Train through DeepSpeed ZeRO-2 (configs/ds_zero2.json).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    num_processes: int = Field(
        1, ge=1, description="Training processes (one per GPU); >1 launches torchrun from the stage itself."
    )
    nnodes: int = Field(1, ge=1, description="Machines in one multi-node SFT, each running the same stage with "
                        "its `node_rank` and `num_processes` ranks (torchrun's --nnodes); >1 needs rdzv_endpoint.")
    node_rank: int = Field(0, ge=0, description="This machine's place among the nnodes (0 writes the outputs: "
                           "give every node the same s3:// out dir, or read them from node 0's).")
    rdzv_endpoint: str | None = Field(None, description="host:port of node 0 that every node's ranks meet at "
                                      "(torchrun's static rendezvous, --master_addr/--master_port); None: one "
                                      "machine (--standalone).")

    @model_validator(mode="after")
    def _rendezvous(self):
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of node 0, reachable from every node)")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"rdzv_endpoint {self.rdzv_endpoint!r} is not host:port")
        return self
    group_by_length: bool = Field(
        False, description="Batch rows of similar length (less padding: for search traces of very unequal lengths)."
    )


HF_ONLY_DECODERS = ("beam", "reference")  # Hugging Face `generate` semantics: they run on the HF model


class InferenceConfig(_Config):
    """How the sampling stages run the model: the engine and the weights' dtype."""

    engine: Literal["hf", "vllm"] = Field("hf", description="Sampling engine: `hf`, our batched KV-cache loop over "
                                          "the HF model (any device; reports every model call and the "
                                          "<backtrack> log-prob the `value` selector ranks by), or `vllm` (GPU "
                                          "workers, pip install 'sbt[vllm]': paged attention, prefix caching; "
                                          "`value` and `forward_passes` are absent). The beam and reference "
                                          "decoders always run on `hf`. README \"Inference engines\".")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Inference dtype of either engine; auto: bfloat16 on a GPU that has it, float32 on "
        "CPU (bf16 matrix products are ~600x slower than fp32 on CPU).")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM: the share of the device's memory "
                                          "its engine reserves for weights and KV cache (on CPU: of RAM). Lower it "
                                          "when another process shares the GPU.")

    def inference(self) -> dict:
        """These fields alone, for the engine's loader (`search.run.lazy_lm`)."""
        return {k: getattr(self, k) for k in InferenceConfig.model_fields}


class SearchConfig(InferenceConfig):
    decoder: Literal[tuple(DECODERS)] = Field(
        "self_backtrack", description="Decoding strategy (`search.registry.DECODERS`)."
    )
    n: int = Field(32, ge=1, description="Samples per expansion / beams / Best-of-N size (the paper's N).")
    backtrack_budget: int = Field(1, ge=0, description="Backtrack rounds after the first expansion (the paper's b).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (the paper: 0.7).")
    selector: Literal["logprob", "oracle"] = Field(
        "logprob", description="Best-of-N selector: the model's mean log-prob, or the verifier (pass@N)."
    )
    max_new_tokens: int = Field(64, ge=1, description="Token limit of one continuation.")
    batch_rows: int = Field(2048, ge=1, description="Sequences decoded together in one batch.")
    batch_tokens: int | None = Field(None, ge=1, description="Memory bound of a sampling batch: at most this many "
                                     "rows x positions (longest prompt + token limit) decoded together (the KV "
                                     "cache holds at most twice that); None: `batch_rows` alone. Rows sample "
                                     "the same whatever the chunking.")
    seed: int = Field(4, description="Sampling seed (the paper's eval: 4).")
    shard_size: int = Field(256, ge=1, description="Problems per shard: the unit a killed search resumes from "
                            "and a GPU pool runs at once (`execution.shard_runs`); shard k samples with seed "
                            "`seed + k`, so a new size gives other samples.")

    @model_validator(mode="after")
    def _engine_runs_decoder(self):
        if self.engine != "hf" and self.decoder in HF_ONLY_DECODERS:
            raise ValueError(f"engine: {self.engine} cannot run decoder {self.decoder!r}: it is Hugging Face "
                             "`generate` (beam search), which runs on engine: hf")
        return self


SFT_METHODS = ["greedy", "beam", "best_of_n_8", "best_of_n_16", "best_of_n_32"]
BT_METHODS = ["greedy", "beam", "sbt_b0_n8", "sbt_b0_n32", "sbt_b1_n8", "sbt_b1_n32"]
EI_METHODS = ["greedy", "sbt_b1_n32"]


def method_config(name: str, **overrides) -> SearchConfig:
    """The SearchConfig of a named method (`METHODS`), with `overrides` (temperature, lengths, seed) on top."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return SearchConfig(**{**METHODS[name], **overrides})


def _known_methods(names: list[str]) -> list[str]:
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    return names


class EvalConfig(InferenceConfig):
    limit: int | None = Field(200, ge=1, description="Problems per evaluation split (None: all).")
    ei_methods: list[str] = Field(EI_METHODS, description="Methods run on each expert-iteration model.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of every sampling method.")
    max_new_tokens: int = Field(64, ge=1, description="Token limit of one continuation.")
    batch_rows: int = Field(2048, ge=1, description="Sequences decoded together.")
    batch_tokens: int | None = Field(None, ge=1, description="Memory bound of a sampling batch: at most this many "
                                     "rows x positions (longest prompt + token limit) decoded together (the KV "
                                     "cache holds at most twice that); None: `batch_rows` alone. Rows sample "
                                     "the same whatever the chunking.")
    seed: int = Field(4, description="Sampling seed.")
    shard_size: int = Field(256, ge=1, description="Problems per search shard (`SearchConfig.shard_size`).")
    splits: list[str] | None = Field(None, description="Evaluation splits (None: all of the domain's, e.g. "
                                     "Countdown's val_seen and val_new).")

    _methods = field_validator("ei_methods")(_known_methods)

    def search_config(self, method: str) -> SearchConfig:
        """The method's SearchConfig with this section's settings; beam and reference keep engine hf."""
        inference = self.inference()
        if METHODS[method]["decoder"] in HF_ONLY_DECODERS:
            inference["engine"] = "hf"
        return method_config(method, temperature=self.temperature, max_new_tokens=self.max_new_tokens,
                             batch_rows=self.batch_rows, batch_tokens=self.batch_tokens, seed=self.seed,
                             shard_size=self.shard_size, **inference)


class StudyEvalConfig(InferenceConfig):
    """`sbt study`: how each model is evaluated at equal test-time compute (arXiv 2504.07052).

    A trace model (dfs/mix/think) decodes once per problem, greedy and sampled, read at every token
    budget; a direct model samples max(ns) answers, read at every n; a self-backtracking model runs
    greedy and the first paper's search (`search_methods`). All on the domain's held-out split.
    """

    split: str | None = Field(None, description="Split evaluated; None: the domain's held-out split (its last).")
    limit: int = Field(200, ge=1, description="Problems evaluated (the paper: 200).")
    budgets: list[int] = Field([256, 512, 1024, 2048, 4096], description="Token budgets a trace model's one "
                               "decode is read at (the paper's Countdown: 256 to 4,096).")
    ns: list[int] = Field([1, 2, 4, 8, 16, 32, 64], description="Sample counts a direct model is read at.")
    temperature: float = Field(0.7, gt=0, description="Temperature of every sampled decode (the paper: 0.7).")
    direct_max_new_tokens: int = Field(512, ge=1, description="Token limit of one direct sample (the paper's "
                                       "direct context: 512).")
    search_methods: list[str] = Field(["sbt_b0_n8", "sbt_b1_n8", "sbt_b1_n16", "sbt_b1_n32"],
                                      description="The self-backtracking search's (b, N) points "
                                      "(`search.registry.METHODS`).")
    batch_rows: int = Field(2048, ge=1, description="Sequences decoded together.")
    batch_tokens: int | None = Field(None, ge=1, description="Memory bound of a sampling batch: at most this many "
                                     "rows x positions (longest prompt + token limit) decoded together (the KV "
                                     "cache holds at most twice that); None: `batch_rows` alone. Rows sample "
                                     "the same whatever the chunking.")
    shard_size: int = Field(100, ge=1, description="Problems per shard: the unit a killed study-eval resumes "
                            "from and a GPU pool runs at once (`execution.shard_runs`); shard k samples with seed "
                            "`seed + k`, so a new size gives other samples.")
    seed: int = Field(4, description="Sampling seed.")

    _methods = field_validator("search_methods")(_known_methods)

    @field_validator("budgets", "ns")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v):
            raise ValueError("needs at least one value, every value >= 1")
        return sorted(set(v))


class GRPOConfig(_Config):
    """GRPO from the verifier's reward (arXiv 2504.07052's RL stage), on TRL's `GRPOTrainer`.

    Defaults are the paper's settings; `models` names the run's models that get a GRPO stage
    after their SFT (none by default). Prompts come from the domain's train split.
    """

    models: list[str] = Field([], description="Models of `models` fine-tuned with GRPO after SFT (names).")
    steps: int = Field(100, ge=1, description="Optimiser steps; each draws `prompts_per_step` prompts.")
    prompts_per_step: int = Field(256, ge=1, description="Prompts per optimiser step (the paper: 256).")
    rollouts: int = Field(8, ge=2, description="Completions sampled per prompt, the group (the paper: 8).")
    temperature: float = Field(0.7, gt=0, description="Rollout sampling temperature (the paper: 0.7).")
    learning_rate: float = Field(1e-6, gt=0, description="Learning rate (the paper: 1e-6).")
    lr_scheduler: str = Field("constant", description="Hugging Face scheduler name (the paper: constant).")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps.")
    beta: float = Field(0.001, ge=0, description="KL coefficient against the SFT model (the paper: 0.001).")
    clip: float = Field(0.2, gt=0, description="PPO clip range epsilon (the paper: 0.2).")
    entropy_coef: float = Field(0.001, ge=0, description="Entropy bonus coefficient (the paper: 0.001).")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "grpo", description="TRL's loss aggregation; grpo averages over each completion's tokens (the paper's).")
    max_completion_length: int | None = Field(
        None, ge=1, description="Rollout token limit; None: the model's evaluation length (the paper: 4,096 for "
        "backtracking models, 512 for direct ones).")
    micro_batch: int | None = Field(None, ge=1, description="Completions per forward/backward pass (gradients "
                                    "accumulate to one step); None: all of a step's completions at once.")
    format_reward: float = Field(0.0, ge=0, description="Weight of the format reward (1 when the response states "
                                 "an answer the domain can read); 0: the verifier's reward alone, as the paper.")
    problems: int | None = Field(None, ge=1, description="Train problems the prompts are drawn from (None: all).")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many steps (resume point).")
    logging_steps: int = Field(1, ge=1, description="Log reward, KL and lengths every this many steps.")
    max_minutes: float | None = Field(None, gt=0, description="Stop (and save) after this wall time.")
    seed: int = Field(0, description="Seed for prompt order and rollouts.")
    bf16: bool = Field(True, description="bf16 mixed precision on a GPU (always fp32 on CPU).")
    eval_ks: list[int] = Field([1, 2, 4, 8, 16, 32], description="k of pass@k before and after GRPO (unbiased "
                               "estimator over max(k) samples per problem).")
    eval_limit: int = Field(200, ge=1, description="Held-out problems of the before/after pass@k evaluation.")
    methods: list[str] | None = Field(None, description="Methods run on each tuned model (`eval-grpo-X`, "
                                      "`search.registry.METHODS`); None: the model's own `methods`.")
    use_vllm: bool = Field(False, description="Rollouts through vLLM (GPU workers with `pip install vllm`); "
                           "off: TRL's transformers generation (CPU and GPU).")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM shares the training GPU; server: a `trl vllm-serve` process.")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="GPU memory share of colocated vLLM.")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _known_methods(v)

    @field_validator("eval_ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(x < 1 for x in v):
            raise ValueError("needs at least one k, every k >= 1")
        return sorted(set(v))

    @model_validator(mode="after")
    def _batches(self):
        completions = self.prompts_per_step * self.rollouts
        if self.micro_batch and completions % self.micro_batch:
            raise ValueError(f"micro_batch ({self.micro_batch}) must divide prompts_per_step x rollouts "
                             f"({completions})")
        return self


class OnPolicyConfig(InferenceConfig):
    """D_back rows from a trained model's own wrong steps (`sbt_core.onpolicy`), added to its training set."""

    source: str = Field(description="The model whose errors are harvested: a ladder rung listed earlier, or a "
                        "model path / URI.")
    problems: int = Field(20000, ge=1, description="Train problems to sample states from (the first N).")
    samples: int = Field(4, ge=1, description="Next steps sampled per state (an optimal prefix).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the harvest.")
    max_new_tokens: int = Field(16, ge=1, description="Tokens sampled per state (one step needs a few).")
    batch_rows: int = Field(2048, ge=1, description="Sequences decoded together.")
    batch_tokens: int | None = Field(None, ge=1, description="Memory bound of a sampling batch: at most this many "
                                     "rows x positions (longest prompt + token limit) decoded together (the KV "
                                     "cache holds at most twice that); None: `batch_rows` alone. Rows sample "
                                     "the same whatever the chunking.")
    shard_size: int = Field(5000, ge=1, description="Problems per shard: the unit a killed harvest resumes from "
                            "and a GPU pool runs at once (`execution.shard_runs`); shard k draws its prefixes and "
                            "samples from seed `seed + k`, so a new size gives other rows.")
    seed: int = Field(0, description="Seed of the prefix choice and the sampling.")


class ModelSpec(_Config):
    """One model of the run: the data recipe it is trained on, its size and SFT, and how it is evaluated."""

    recipe: str = Field("optimal", description="Data recipe (`recipes.RECIPES`).")
    stage: str | None = Field(None, description="Suffix of its stages and folders (build-data-X, sft-X, "
                              "eval-sft-X); None: the model's name.")
    label: str | None = Field(None, description="Its name in the report's first column; None: from the recipe.")
    model: ModelConfig | None = Field(None, description="Size / path; None: the run's `model`.")
    sft: TrainConfig | None = Field(None, description="SFT settings; None: the run's `sft`.")
    data: BuildDataConfig | None = Field(None, description="Its data settings (trace_format, prompt, ...); None: the "
                                         "run's `build_data`. Its `recipe` is this model's.")
    methods: list[str] = Field(["greedy"], description="Methods evaluated on it (`search.registry.METHODS`).")
    bare_methods: list[str] = Field([], description="Methods (names or shell patterns, `sbt_*`) whose report rows "
                                    "are named by the method alone, as the paper's Table 1 names them: `best_of_n_N` "
                                    "of the SFT model, `sbt_bB_nN` of the backtracking model; other rows are "
                                    "`<model>_<method>`.")

    _methods = field_validator("methods")(_known_methods)

    @field_validator("bare_methods")
    @classmethod
    def _bare_name_methods(cls, patterns: list[str]) -> list[str]:
        if unmatched := [p for p in patterns if not fnmatch.filter(METHODS, p)]:
            raise ValueError(f"{unmatched} match no method of {sorted(METHODS)}")
        return patterns


DEFAULT_MODELS = {
    "sft": ModelSpec(recipe="optimal", stage="op", methods=SFT_METHODS, bare_methods=["best_of_n_*"]),
    "bt": ModelSpec(recipe="self_backtrack", stage="bt", methods=BT_METHODS, bare_methods=["sbt_*"]),
}


class ExpertIterationConfig(_Config):
    rounds: int = Field(3, ge=0, description="Expert-iteration rounds (the paper: 3).")
    model: str = Field("bt", description="The model of `models` that round 1 starts from.")
    method: str = Field("sbt_b1_n32", description="The slow search whose verified outputs are distilled.")
    train_problems: int = Field(2000, ge=1, description="Train problems searched per round.")
    transductive: bool = Field(False, description="Search an evaluation split instead of train (the paper's code).")
    continue_from_previous: bool = Field(True, description="Round r fine-tunes round r-1's model; False: every "
                                         "round fine-tunes the model expert iteration starts from (`model`) on its "
                                         "round's outputs (the search is always the last round's model's).")
    replay: float = Field(0.0, ge=0, description="Rows of the start model's own training set (D_op u D_back of "
                          "`model`) added per distilled output, drawn at random without replacement (at most all "
                          "of them): 0 trains on the distilled outputs alone; 1.0 on as many old rows as new.")
    train: TrainConfig = Field(TrainConfig(), description="SFT on the distilled outputs.")

    _method = field_validator("method")(lambda v: _known_methods([v])[0])


SEARCH_GRID = [f"sbt_b{b}_n{n}" for b in (0, 1, 2) for n in (8, 16, 32)]


class AblationConfig(_Config):
    """`sbt ablate`: the backtracking model retrained on other data mixes, and its search over a b x N grid.

    Each variant changes one field of `build_data` (the others stay the preset's); a variant equal
    to the preset reuses the pipeline's own backtracking model.
    """

    error_type_ratios: dict[str, tuple[float, float, float]] = Field(
        {"1:2:2": (1, 2, 2), "1:1:1": (1, 1, 1), "computation-heavy 1:4:1": (1, 4, 1)},
        description="Label -> exploration:computational:rule-violation weights.",
    )
    backtrack_per_optimal: list[float] = Field(
        [1.0, 2.0], description="D_back rows per D_op row for the D_op:D_back variants (1.0 is 1:1, 2.0 is 1:2)."
    )
    methods: list[str] = Field(["greedy", "sbt_b1_n32"], description="Methods run on every data variant.")
    search_grid: list[str] = Field(SEARCH_GRID, description="Methods run on the preset's backtracking model.")

    _methods = field_validator("methods", "search_grid")(_known_methods)

    @field_validator("backtrack_per_optimal")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("every D_back:D_op ratio must be > 0 (the variants train backtracking models)")
        return v


class ExecutionConfig(_Config):
    """Where stages run: all in the pipeline's own process, or heavy ones on a GPU work pool."""

    mode: Literal["in_process", "deployments"] = Field(
        "in_process", description="in_process: every stage in the flow's process; deployments: each stage through "
        "run_deployment (heavy stages on the GPU deployment, light ones on the CPU deployment)."
    )
    gpu_deployment: str = Field("sbt-stage/gpu", description="FLOW/DEPLOYMENT that runs SFT, search and evaluation.")
    cpu_deployment: str | None = Field(
        "sbt-stage/cpu", description="FLOW/DEPLOYMENT for generate, build data, distill and report (None: in process)."
    )
    shard_runs: int = Field(0, ge=0, description="deployments mode: 0 runs a search, evaluation, study-eval or on-policy harvest as one flow run of "
                            "the GPU deployment; N >= 1 runs its shards (`shard_size` problems each) as their own flow "
                            "runs of it, at most N at once, across the pool's workers, while the stage itself (its "
                            "record, the gather, the summary) runs in the pipeline's run, holding no GPU.")
    shards_per_run: int = Field(1, ge=1, description="deployments mode with shard_runs: the missing shards sent "
                                "this many to a flow run (consecutive ones; a run writes each as it finishes it, so "
                                "a retry redoes only the unwritten): each run costs seconds to start (a process, "
                                "imports, a model load), so pack small shards; keep 1 where shards take minutes.")
    shard_retries: int = Field(1, ge=0, description="Times a failed or crashed shard run is retried on its own "
                               "before the stage fails (a retry of the pipeline run retries it again).")


class RunConfig(_Config):
    """The whole pipeline: one preset in configs/*.yaml, overridable with dotted keys."""

    name: str = Field("tiny", description="Preset name (runs/<name>/ by default; a YAML without "
                      "one: its file's name).")
    domain: str = Field(DEFAULT, description=f"The task domain: one of {sorted(DOMAINS)}.")
    generate: GenerateConfig = Field(DOMAINS[DEFAULT].GenerateConfig(), description="The domain's generator.")
    build_data: BuildDataConfig = Field(BuildDataConfig(), description="Data recipes' shared settings (each model "
                                        "sets its own `recipe`).")
    models: dict[str, ModelSpec] = Field(DEFAULT_MODELS, description="The models trained and evaluated, by name.")
    model: ModelConfig = ModelConfig()
    sft: TrainConfig = Field(TrainConfig(), description="SFT of both the optimal-path and the backtracking model.")
    eval: EvalConfig = EvalConfig()
    expert_iteration: ExpertIterationConfig = ExpertIterationConfig()
    execution: ExecutionConfig = ExecutionConfig()
    ablations: AblationConfig = AblationConfig()
    study: StudyEvalConfig = Field(StudyEvalConfig(), description="Equal-compute evaluation (`sbt study`).")
    grpo: GRPOConfig = Field(GRPOConfig(), description="GRPO after SFT, for the models it names.")

    @model_validator(mode="before")
    @classmethod
    def _generate_domain(cls, tree: Any) -> Any:
        """`generate:` takes the run's domain when it names none."""
        if isinstance(tree, dict):
            domain = tree.get("domain", DEFAULT)
            gen = tree.get("generate")
            if domain not in DOMAINS:
                raise ValueError(f"domain: unknown domain {domain!r}; choose one of {sorted(DOMAINS)}")
            if gen is None:
                tree = {**tree, "generate": {"domain": domain}}
            elif isinstance(gen, dict) and "domain" not in gen:
                tree = {**tree, "generate": {**gen, "domain": domain}}
        return tree

    @model_validator(mode="after")
    def _consistent(self):
        if self.generate.domain != self.domain:
            raise ValueError(f"generate.domain is {self.generate.domain!r} but domain is {self.domain!r}")
        for name, spec in self.models.items():
            if spec.recipe not in RECIPES:
                raise ValueError(f"models.{name}.recipe: unknown recipe {spec.recipe!r}; choose from {sorted(RECIPES)}")
            RECIPES[spec.recipe].check(DOMAINS[self.domain], f"models.{name}.recipe")
            where = f"models.{name}.data" if spec.data else "build_data"
            RECIPES[spec.recipe].check_data(spec.data or self.build_data, DOMAINS[self.domain], where)
        unknown = [s for s in self.eval.splits or () if s not in DOMAINS[self.domain].eval_splits]
        if unknown:
            raise ValueError(f"eval.splits: {unknown} are not evaluation splits of {self.domain} "
                             f"({', '.join(DOMAINS[self.domain].eval_splits)})")
        for name in self.grpo.models:
            if name not in self.models:
                raise ValueError(f"grpo.models: {name!r} is not one of models ({', '.join(self.models)})")
        if self.expert_iteration.rounds and self.expert_iteration.model not in self.models:
            raise ValueError(f"expert_iteration.model: {self.expert_iteration.model!r} is not one of models "
                             f"({', '.join(self.models)})")
        stages = [spec.stage or name for name, spec in self.models.items()]
        if len(set(stages)) != len(stages):
            raise ValueError(f"models: two models share a stage name ({stages})")
        return self

    def model_spec(self, name: str) -> tuple[ModelSpec, ModelConfig, TrainConfig, BuildDataConfig]:
        """A model's spec with the run's defaults filled in: (spec, model, sft, build_data)."""
        spec = self.models[name]
        recipe = RECIPES[spec.recipe]
        model = spec.model or self.model
        if model.size and model.vocabulary is None:
            model = model.model_copy(update={"vocabulary": recipe.vocabulary(DOMAINS[self.domain])})
        sft = spec.sft or self.sft
        if sft.overflow is None:  # the released training splits long traces into rows (arXiv 2504.07052)
            sft = sft.model_copy(update={"overflow": "split" if recipe.style else "cut"})
        return spec, model, sft, (spec.data or self.build_data).model_copy(update={"recipe": spec.recipe})

    def report_models(self) -> dict[str, dict]:
        """Every model the run evaluates, in the report's order, named as its stages and rows name it: the
        `models`, then `grpo_<model>` for each GRPO-tuned one, then `ei<r>` for each expert-iteration round.
        Each: `label` (the report's first column), `bare` (methods whose rows carry their name alone),
        `recipe`, and `round` (0: the model expert iteration starts from; r: round r's; None: neither)."""
        out = {}
        for name, spec in self.models.items():
            out[name] = {"label": spec.label or RECIPES[spec.recipe].label, "bare": list(spec.bare_methods),
                         "recipe": spec.recipe,
                         "round": 0 if self.expert_iteration.rounds and name == self.expert_iteration.model else None}
        for name in self.grpo.models:
            out[f"grpo_{name}"] = {"label": f"{out[name]['label']} + GRPO", "bare": [], "recipe": None, "round": None}
        for r in range(1, self.expert_iteration.rounds + 1):
            out[f"ei{r}"] = {"label": f"expert iteration round {r}", "bare": [], "recipe": None, "round": r}
        return out

    def grpo_eval(self) -> tuple[int, StudyEvalConfig]:
        """The GRPO rollout length (`grpo.max_completion_length`, else `eval.max_new_tokens`), and the pass@k
        evaluation before and after GRPO: `grpo.eval_ks` samples of that length on the held-out split."""
        length = self.grpo.max_completion_length or self.eval.max_new_tokens
        return length, StudyEvalConfig(limit=self.grpo.eval_limit, ns=self.grpo.eval_ks, temperature=self.eval.temperature,
                                       direct_max_new_tokens=length, batch_rows=self.eval.batch_rows,
                                       batch_tokens=self.eval.batch_tokens,
                                       seed=self.eval.seed)

    def with_seed_offset(self, offset: int) -> RunConfig:
        """The same preset with every seed (data, model, SFT, sampling, GRPO, expert iteration) shifted by `offset`."""
        if offset == 0:
            return self
        shift = lambda section: section.model_copy(update={"seed": section.seed + offset})  # noqa: E731
        ei = self.expert_iteration
        return self.model_copy(update={
            "generate": shift(self.generate), "build_data": shift(self.build_data), "model": shift(self.model),
            "sft": shift(self.sft), "eval": shift(self.eval), "grpo": shift(self.grpo),
            "expert_iteration": ei.model_copy(update={"train": shift(ei.train)}),
        })


class StudyConfig(_Config):
    """`sbt study`: one pipeline config per domain (its `models`, data, SFT and `study` section), all
    trained through the pipeline's stages and evaluated at equal test-time compute."""

    name: str = Field("study", description="Study name (runs/<name>/ by default; a YAML without "
                      "one: its file's name).")
    domains: dict[str, RunConfig] = Field(description="Label -> that part's run config; its `domain` defaults to "
                                          "the label when the label names a domain.")
    execution: ExecutionConfig = ExecutionConfig()

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, tree: Any) -> Any:
        """A part names its domain by its label, and runs no expert iteration unless it says so."""
        if isinstance(tree, dict) and isinstance(tree.get("domains"), dict):
            parts = {}
            for label, part in tree["domains"].items():
                if isinstance(part, dict):
                    part = dict(part)
                    if "domain" not in part and label in DOMAINS:
                        part["domain"] = label
                    ei = part.get("expert_iteration") or {}
                    if isinstance(ei, dict):
                        part["expert_iteration"] = {"rounds": 0, **ei}
                parts[label] = part
            tree = {**tree, "domains": parts}
        return tree

    @model_validator(mode="after")
    def _labels(self):
        if not self.domains:
            raise ValueError("domains: a study needs at least one domain")
        for label in self.domains:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", label):
                raise ValueError(f"domains.{label}: a label is lowercase letters, digits, - and _ (it names folders)")
        return self


class ConfigError(ValueError):
    """A preset or override that does not validate; the message names every bad field path."""


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for i, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: is a value, cannot set {dotted}")
        node = child
    node[leaf] = value


def _load_tree(path: str | Path | None) -> dict:
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"no such config file: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return tree


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _based(tree: dict, path, seen: tuple = ()) -> dict:
    """`base: tiny` (a preset beside this file, or a path): that preset's sections, with this file's keys merged
    over them section by section; the base's `name` is not inherited."""
    if "base" not in tree:
        return tree
    base = tree.pop("base")
    here = Path(path).parent if path is not None else Path("configs")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"invalid configuration ({path}):\nbase: a preset name or a YAML path")
    base_path = Path(base) if base.endswith((".yaml", ".yml")) else here / f"{base}.yaml"
    if not base_path.is_absolute() and not base_path.exists():
        base_path = here / base_path
    if base_path.resolve() in seen:
        raise ConfigError(f"invalid configuration ({path}):\nbase: {base} includes itself")
    parent = _based(_load_tree(base_path), base_path, (*seen, base_path.resolve()))
    parent.pop("name", None)
    return _merged(parent, tree)


def _named(tree: dict, path) -> dict:
    """A run, study or ladder YAML without `name:` is named after its file (`my-run.yaml` -> runs/my-run), not
    after the model's default, so that two such files never share a run folder."""
    if path is not None and "name" not in tree:
        tree["name"] = Path(path).stem
    return tree


def _apply(tree: dict, overrides: list[str], model=None) -> dict:
    """`key.sub=value` overrides on a config tree. With the config's `model`, a key of a mapping field (a model
    name under `models`, a study's part, a ladder's rung) must exist: a typo there fails like any other typo, and
    a new entry is asked for with a leading `+` (`--set models.+dfs.recipe=dfs_trace`), as in Hydra."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        dotted = _checked_entries(tree, key.strip(), model) if model is not None else key.strip()
        _set_dotted(tree, dotted, yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _unwrap(annotation):
    """X from `X | None`; None for unions of several models (the generate union), which are not walked."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return annotation


def _checked_entries(tree: dict, dotted: str, model) -> str:
    """`dotted` with its `+` marks removed, after checking that each mapping key it names exists in `tree` (or in
    the field's default where the tree has no such section) or is marked new with `+`."""
    parts, kind, node, default = dotted.split("."), model, tree, None
    for i, part in enumerate(parts):
        if typing.get_origin(kind) is dict:
            name = part.removeprefix("+")
            entries = node if isinstance(node, dict) else default if isinstance(default, dict) else {}
            if name == part and name not in entries:
                where = ".".join(parts[:i])
                raise ConfigError(f"{dotted}: {where} has no entry {name!r} (it has: {', '.join(entries) or 'none'}); "
                                  f"a new one is --set {where}.+{name}...")
            parts[i] = name
            kind, default = _unwrap(typing.get_args(kind)[1]), None
        elif isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            name, field = part, kind.model_fields[part]
            kind, default = _unwrap(field.annotation), field.get_default(call_default_factory=True)
        else:
            break
        node = node.get(name) if isinstance(node, dict) else None
    return ".".join(parts)


def _validate(model, tree: dict, path):
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        where = f" ({path})" if path else ""
        raise ConfigError(f"invalid configuration{where}:\n{format_validation_error(e)}") from None


def load_run_config(path: str | Path | None = None, overrides: list[str] = (), tree: dict | None = None) -> RunConfig:
    """A preset YAML (or a `tree` already read, e.g. the config a run recorded in run.json) plus `key.sub=value`
    overrides (values parsed as YAML: 3, 1e-3, [1,2], null)."""
    tree = _named(_based(_load_tree(path), path), path) if tree is None else dict(tree)
    if any(item.strip().startswith("models.") for item in overrides) and "models" not in tree:
        tree["models"] = {k: v.model_dump(mode="json", exclude_defaults=True) for k, v in DEFAULT_MODELS.items()}
    return _validate(RunConfig, _apply(tree, overrides, RunConfig), path)


def load_stage_config(model, path: str | Path | None = None, overrides: list[str] = (), **values):
    """One stage's config for its `sbt` command: a YAML file of the model's fields (`--config`), then the
    command's own flags (`values`; None: not given, so the model's default stands), then `--set field=value`
    overrides; every error names its field, as the preset loaders do."""
    tree = _load_tree(path)
    tree.update({k: v for k, v in values.items() if v is not None})
    return _validate(model, _apply(tree, list(overrides), model), path)


def load_study_config(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """A study YAML (`name`, `domains: {label: run config}`) plus overrides such as
    `domains.countdown.sft.max_steps=100`."""
    return _validate(StudyConfig, _apply(_named(_load_tree(path), path), overrides, StudyConfig), path)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the dotted field path."""
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        for i in range(len(loc) - 1):  # the generate union's tag is not a field
            if loc[i] == "generate" and loc[i + 1] in DOMAINS:
                del loc[i + 1]
                break
        path = ".".join(str(p) for p in (prefix, *loc) if p != "")
        lines.append(f"{path or '<root>'}: {e['msg']}")
    return "\n".join(lines)
