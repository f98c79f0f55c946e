"""The paper's self-backtracking decoder, one problem at a time, for comparison.

Follows `SelfBackTrackingDecoder.decode` of the released code (LAMDASZ-ML/Self-Backtracking,
author commit f0f6473), as read in shared/reference/self_backtracking.md §4:
- each state is expanded with HF beam-sample: `generate(do_sample=True, num_beams=N,
  num_return_sequences=N)`, stopping at EOS only, up to a total length fixed from the
  original prompt;
- a sequence's score is the mean log-probability of every token after the original prompt,
  trailing padding included (the paper pads with EOS, so padding is scored as EOS here);
- sequences containing `Goal Reached!` are candidates; a sequence containing `<backtrack>`
  is decoded without special tokens and cut at its second-last newline, while the next
  frontier holds fewer than floor(sqrt(b)) states; visited texts are skipped;
- candidates with the same path are grouped and their scores summed; the best group wins;
  with no candidate, the first sequence of the last generate call is returned.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from sbt_core.config import SearchConfig
from sbt_core.domains import BACKTRACK
from sbt_core.domains.base import RESPONSE_HEADER
from sbt_core.search.common import LM, Result


@torch.no_grad()
def _expand(lm: LM, state: str, total_length: int, prompt_len: int, cfg: SearchConfig):
    device = next(lm.model.parameters()).device
    ids = lm.tokenizer(state, return_tensors="pt", add_special_tokens=True)["input_ids"].to(device)
    max_new = max(1, total_length - ids.shape[1])
    seqs = lm.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, num_beams=cfg.n,
        num_return_sequences=cfg.n, temperature=cfg.temperature, max_new_tokens=max_new,
        eos_token_id=lm.eos_id, pad_token_id=lm.pad_id,
    )
    steps = seqs.shape[1] - ids.shape[1]
    scored = torch.where(seqs == lm.pad_id, lm.eos_id, seqs)  # pad = eos, as in the paper
    logp = torch.log_softmax(lm.model(input_ids=scored).logits[:, :-1].float(), dim=-1)
    tok_lp = logp.gather(-1, scored[:, 1:, None]).squeeze(-1)[:, prompt_len - 1 :]
    scores = tok_lp.mean(-1).tolist() if tok_lp.shape[1] else [0.0] * len(seqs)
    return seqs, scores, steps


def _solve_one(lm: LM, problem: dict, cfg: SearchConfig) -> Result:
    prompt = lm.prompt(problem)
    prompt_len = len(lm.tokenizer(prompt, add_special_tokens=True)["input_ids"])
    total_length = prompt_len + cfg.max_new_tokens
    frontier, visited, candidates = [prompt], {prompt}, []
    last_first, result = "", Result(output="")
    for _ in range(cfg.backtrack_budget + 1):
        new_frontier = []
        for state in frontier:
            seqs, scores, steps = _expand(lm, state, total_length, prompt_len, cfg)
            result.generated_tokens += steps * len(seqs)
            result.forward_passes += steps + 1
            texts = [lm.tokenizer.decode(s, skip_special_tokens=False) for s in seqs.tolist()]
            texts = [t.replace(lm.tokenizer.pad_token, "").replace(lm.tokenizer.eos_token, "") for t in texts]
            last_first = texts[0]
            for seq, text, score in zip(seqs.tolist(), texts, scores):
                if lm.domain.claims_goal(text):
                    candidates.append((text, score))
                if BACKTRACK in text and len(new_frontier) < math.isqrt(cfg.backtrack_budget):
                    plain = lm.tokenizer.decode(seq, skip_special_tokens=True)
                    cut = plain.rfind("\n", 0, plain.rfind("\n"))
                    new_state = plain[: cut + 1]
                    if len(new_state) <= len(prompt):
                        new_state = prompt
                    if new_state not in visited:
                        visited.add(new_state)
                        new_frontier.append(new_state)
        result.rounds += 1
        frontier = new_frontier
        if not frontier:
            break

    def response(text: str) -> str:
        return text.split(RESPONSE_HEADER, 1)[-1]

    groups = defaultdict(list)
    for text, score in candidates:
        groups[lm.domain.final(response(text))].append((text, score))
    result.candidates = [{"response": response(t), "score": s, "value": None} for t, s in candidates]
    if groups:
        best = max(groups.values(), key=lambda g: sum(s for _, s in g))
        result.output = response(best[0][0])
    else:
        result.output = response(last_first)
    return result


def reference(lm: LM, problems, cfg: SearchConfig, generator) -> list[Result]:
    """One problem per call, as the paper's evaluation runs it."""
    return [_solve_one(lm, problem, cfg) for problem in problems]
