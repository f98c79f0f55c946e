"""Baseline decoders over a batch of problems: greedy, beam, sampling, Best-of-N, majority.

Each is a function `(lm, problems, cfg, generator) -> list[Result]`; `problems` is a list of
problem dicts of `lm.domain`. Best-of-N's `oracle` selector consults the verifier (that is pass@N); every
other selector ranks by the model's own mean token log-probability.
"""

from __future__ import annotations

import torch

from sbt_core import selectors
from sbt_core.config import SearchConfig
from sbt_core.search.common import LM, Result, mean
from sbt_core.search.sampling import left_pad


def sample_n(lm: LM, problems, cfg: SearchConfig, n: int, temperature: float, generator):
    """n continuations per problem: lists of (text, score, tokens, value) and per-problem model calls."""
    prompts = [lm.prompt_ids(problem) for problem in problems for _ in range(n)]
    out, passes = lm.sample(
        prompts, temperature=temperature, max_new_tokens=cfg.max_new_tokens, batch_rows=cfg.batch_rows,
        batch_tokens=cfg.batch_tokens, generator=generator,
    )
    per_problem = []
    for p in range(len(problems)):
        rows = range(p * n, (p + 1) * n)
        samples = [(lm.text(out.tokens[r]), mean(out.logprobs[r]), len(out.tokens[r]),
                    lm.value(out.tokens[r], None if out.watched is None else out.watched[r])) for r in rows]
        calls = None if passes is None else sum(k for _, k in set(passes[r] for r in rows))
        per_problem.append((samples, calls))
    return per_problem


def _result(samples, passes, output: str) -> Result:
    return Result(
        output=output,
        candidates=[{"response": t, "score": s, "value": v} for t, s, _, v in samples],
        generated_tokens=sum(k for _, _, k, _ in samples),
        forward_passes=passes,
        rounds=1,
    )


def greedy(lm: LM, problems, cfg: SearchConfig, generator) -> list[Result]:
    return [_result(s, p, s[0][0]) for s, p in sample_n(lm, problems, cfg, 1, 0.0, generator)]


def sample(lm: LM, problems, cfg: SearchConfig, generator) -> list[Result]:
    return [_result(s, p, s[0][0]) for s, p in sample_n(lm, problems, cfg, 1, cfg.temperature, generator)]


def best_of_n(lm: LM, problems, cfg: SearchConfig, generator) -> list[Result]:
    results = []
    for problem, (samples, passes) in zip(problems, sample_n(lm, problems, cfg, cfg.n, cfg.temperature, generator)):
        if cfg.selector == "oracle":  # pass@N: any verified sample counts
            right = [t for t, *_ in samples if lm.domain.verify(problem, t).correct]
            best = right[0] if right else max(samples, key=lambda x: x[1])[0]
        else:
            best = max(samples, key=lambda x: x[1])[0]
        results.append(_result(samples, passes, best))
    return results


def majority(lm: LM, problems, cfg: SearchConfig, generator) -> list[Result]:
    """The most frequent final answer among the samples (`selectors`' `majority`: `Domain.answer_key`, in
    Countdown the path's multiset of steps, since every right answer ends at the target; in Sudoku the
    filled grid). Ties go to the higher mean log-prob; no readable answer: the best-scored sample.
    """
    results = []
    for samples, passes in sample_n(lm, problems, cfg, cfg.n, cfg.temperature, generator):
        pick = selectors.choose("majority", [{"response": t, "score": s} for t, s, *_ in samples], lm.domain)
        results.append(_result(samples, passes, samples[pick][0]))
    return results


@torch.no_grad()
def beam(lm: LM, problems, cfg: SearchConfig, generator) -> list[Result]:
    """Beam search with `n` beams (Hugging Face `generate`), batched over problems."""
    results = []
    per_batch = max(1, cfg.batch_rows // cfg.n)
    device = next(lm.model.parameters()).device  # HF only: loads the model if this LM had another engine
    for s in range(0, len(problems), per_batch):
        chunk = problems[s : s + per_batch]
        ids, mask = left_pad([lm.prompt_ids(problem) for problem in chunk], lm.pad_id, device)
        out = lm.model.generate(
            input_ids=ids, attention_mask=mask, num_beams=cfg.n, num_return_sequences=1, do_sample=False, max_new_tokens=cfg.max_new_tokens,
            eos_token_id=lm.stop_ids, pad_token_id=lm.pad_id, return_dict_in_generate=True, output_scores=True,
        )
        width = ids.shape[1]
        for i in range(len(chunk)):
            gen = out.sequences[i, width:].tolist()
            text = lm.text(gen)
            tokens = sum(1 for t in gen if t != lm.pad_id)
            score = float(out.sequences_scores[i]) if out.sequences_scores is not None else 0.0
            results.append(Result(text, [{"response": text, "score": score, "value": None}], tokens * cfg.n, len(gen), 1))
    return results
