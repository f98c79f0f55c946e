"""Tokenizers and causal LMs: tiny from-scratch models, or any local Hugging Face model.

Both kinds go through one loading path (`load`): a tiny model is built, saved with
`save_pretrained`, and loaded back like any checkpoint. `<backtrack>` is always a special
token, added (and the embeddings resized) when a pretrained tokenizer lacks it. Nothing
here touches the network.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sbt_core import io
from sbt_core.domains import BACKTRACK, DEFAULT, DOMAINS

log = logging.getLogger(__name__)

PAD, EOS, BOS, UNK = "<pad>", "</s>", "<s>", "<unk>"
# How a from-scratch tokenizer writes numbers: one digit a token, or up to three digits a token, left to right, as
# Llama-3's pre-tokenizer splits digit runs (`\p{N}{1,3}`): `1234` is `123`, `4`.
NUMBERS = ("digits", "chunks")
DIGITS = "0123456789"
# The tokenizer_config.json key that says what the model is given (`Domain.prompt`'s form): the SFT stage writes it
# from its data, every loader of the model reads it (absent: the question).
PROMPT_KEY = "sbt_prompt"
# Every domain's vocabularies by name: (fixed phrases, one token each; characters, one token each).
VOCABULARIES = {name: v for d in DOMAINS.values() for name, v in d.vocabularies.items()}
DEFAULT_VOCABULARY = next(iter(DOMAINS[DEFAULT].vocabularies))
# Sizes after arXiv 2504.07052's Qwen2 configs (3M, 17M), plus a ~1M model for laptops.
SIZES = {
    "1m": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=512),
    "3m": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, intermediate_size=512),
    "17m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=1, intermediate_size=1024),
    # Llama-3.2-1B's shape (0.97B parameters with this vocabulary): for GPU throughput checks, not for a CPU
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192),
}


def build_tokenizer(vocabulary: str = DEFAULT_VOCABULARY, numbers: str = "digits") -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose decode is the exact inverse of encode on a domain's format; `numbers`: one of
    `NUMBERS` (`chunks` adds the 1,110 strings of one to three digits as tokens, after the vocabulary's own)."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {vocabulary!r}; choose one of {sorted(VOCABULARIES)}")
    if numbers not in NUMBERS:
        raise ValueError(f"unknown number tokens {numbers!r}; choose one of {NUMBERS}")
    phrases, chars = VOCABULARIES[vocabulary]
    specials = [PAD, EOS, BOS, UNK, BACKTRACK]
    parts = [re.escape(p) for p in phrases]
    if numbers == "chunks":
        chars = tuple(c for c in chars if c not in DIGITS)
        chunks = [f"{i:0{w}d}" for w in (1, 2, 3) for i in range(10**w)]
        parts.append("[0-9]{1,3}")  # greedy, left to right: Llama-3's digit chunks
    else:
        chunks = []
    vocab = {tok: i for i, tok in enumerate(specials + list(phrases) + list(chars) + chunks)}
    pattern = "|".join(parts + [re.escape(c) for c in chars])
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=UNK,
        additional_special_tokens=[BACKTRACK],
    )
    fast.padding_side = "left"
    return fast


def build_tiny(size: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0, max_positions: int = 256) -> LlamaForCausalLM:
    """A from-scratch Llama of a named size, fp32, for the tokenizer's vocabulary."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=max_positions, rope_theta=10_000.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True, **SIZES[size],
    )
    return LlamaForCausalLM(cfg)


def create_tiny(size: str, out_dir: str | Path, seed: int = 0, vocabulary: str | None = None,
                max_positions: int = 256, numbers: str = "digits") -> Path:
    """Build and save a tiny model with its tokenizer; load it back with `load`."""
    tokenizer = build_tokenizer(vocabulary or DEFAULT_VOCABULARY, numbers)
    model = build_tiny(size, tokenizer, seed, max_positions)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def prepare_tokenizer(tokenizer) -> bool:
    """Make `<backtrack>` a special token and give the tokenizer a pad token; True if it grew."""
    grew = False
    if BACKTRACK not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [BACKTRACK]})
        grew = True
    if tokenizer.pad_token is None:
        # As in the paper's train.py: eos doubles as pad. Padding is never supervised here.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return grew


def prompt_form(tokenizer) -> str:
    """What the model was trained to be given (`Domain.prompt`'s form), as its SFT recorded it."""
    return tokenizer.init_kwargs.get(PROMPT_KEY, "question")


def set_prompt_form(tokenizer, form: str) -> None:
    """Record the prompt form in the tokenizer (saved in tokenizer_config.json with it)."""
    tokenizer.init_kwargs[PROMPT_KEY] = form


def model_folder(path: str | Path) -> Path:
    """A saved model's local folder (a remote one downloaded to the cache), checked to hold a model."""
    path = Path(io.localize_dir(str(path)))
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    if not (path / "config.json").is_file():
        if (path / "model" / "config.json").is_file():  # a stage's folder (sft-bt/): its model is model/
            raise FileNotFoundError(f"{path} is a stage's folder, not a model: give {path / 'model'}")
        raise FileNotFoundError(f"{path} holds no model (no config.json): give a folder saved with save_pretrained")
    return path


def load_tokenizer(path: str | Path):
    """(tokenizer, whether `<backtrack>` had to be added) of a model folder (`model_folder`)."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer, prepare_tokenizer(tokenizer)


def load(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) from a folder (local, or remote through a cached download); no hub access."""
    path = model_folder(path)
    tokenizer, grew = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    if grew or model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
        log.info("resized embeddings to %d for %s", len(tokenizer), BACKTRACK)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
