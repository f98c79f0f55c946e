"""Models and tokenizers: named tiny sizes, one loading path, and any local HF model."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from sbt_core.config import SearchConfig
from sbt_core.domains.countdown.format import BACKTRACK, format_prompt
from sbt_core.models import SIZES, build_tiny, build_tokenizer, create_tiny, load, num_parameters
from sbt_core.search.common import LM
from sbt_core.search.run import search
from sbt_core.train import encode_example


def test_tokenizer_roundtrips_the_format_with_single_token_phrases():
    tok = build_tokenizer()
    text = format_prompt([90, 11, 37, 95], 55) + "90+95=185\n11*185=2035\n2035/37=55\nGoal Reached!"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(ids)
    assert "Goal Reached!" in pieces and "###Question:" in pieces and "->target" in pieces
    assert all(len(p) == 1 for p in pieces if p[0].isdigit())  # digits one per token
    assert tok.convert_ids_to_tokens(tok("1\n<backtrack>")["input_ids"]) == ["1", "\n", BACKTRACK]
    assert BACKTRACK in tok.all_special_tokens


@pytest.mark.parametrize("size,low,high", [("1m", 0.8e6, 1.3e6), ("3m", 2.5e6, 4e6), ("17m", 15e6, 20e6),
                                           ("1b", 0.9e9, 1.1e9)])
def test_named_sizes(size, low, high):
    import torch

    with torch.device("meta"):  # shapes only: the 1b model's weights would take 4 GB
        assert low < num_parameters(build_tiny(size, build_tokenizer())) < high
    assert set(SIZES) == {"1m", "3m", "17m", "1b"}


def test_tiny_model_saves_and_loads_through_the_common_path(tmp_path):
    create_tiny("1m", tmp_path / "m")
    model, tok = load(tmp_path / "m")
    assert model.get_input_embeddings().num_embeddings == len(tok) == 30
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing")


def _bpe_model(path):
    """A GPT-2-style model with a BPE tokenizer that has never heard of <backtrack>."""
    corpus = [format_prompt([a, b, 7, 9], 24) + f"{a}+{b}={a + b}\nGoal Reached!" for a in range(1, 40) for b in range(1, 20)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<|endoftext|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", unk_token="<unk>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2))
    tok.save_pretrained(path)
    model.save_pretrained(path)
    return len(tok)


def test_any_local_hf_model_gets_backtrack_and_resized_embeddings(tmp_path):
    before = _bpe_model(tmp_path / "gpt2")
    model, tok = load(tmp_path / "gpt2")
    assert len(tok) == before + 1 and BACKTRACK in tok.all_special_tokens
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    assert tok.pad_token == tok.eos_token  # as in the paper: eos doubles as pad
    # Masking works from character offsets, whatever the tokenizer's pieces are.
    ex = encode_example(tok, format_prompt([3, 4, 7, 9], 24), "3+4=7\n7*9=63\n<backtrack>", 128)
    kept = tok.decode([i for i, l in zip(ex["input_ids"], ex["labels"]) if l != -100]).replace(" ", "")
    assert "7*9=63" not in kept and kept.startswith("3+4=7") and BACKTRACK in kept
    # Our batched greedy decode on this pretrained model is Hugging Face's greedy `generate`, token for token:
    # the same text up to and including the first EOS or <backtrack> (EOS dropped from the text, as always).
    lm, problems = LM(model, tok), [{"nums": [3, 4, 7, 9], "target": 24}, {"nums": [1, 12, 7, 9], "target": 21}]
    ours = search(lm, problems, SearchConfig(decoder="greedy", max_new_tokens=12))
    for problem, result in zip(problems, ours):
        ids = torch.tensor([lm.prompt_ids(problem)])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                 eos_token_id=lm.stop_ids, pad_token_id=lm.pad_id)[0, ids.shape[1]:].tolist()
        assert result.output == lm.text(out) and result.generated_tokens == len(out) > 0
    # And the search runs on it: every candidate it keeps claims the goal, and its cost is counted.
    (res,) = search(lm, problems[:1], SearchConfig(decoder="self_backtrack", n=2, max_new_tokens=8))
    assert res.generated_tokens > 0 and all(lm.domain.claims_goal(c["response"]) for c in res.candidates)
