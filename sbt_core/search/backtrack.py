"""Self-backtracking search (Self-Backtracking, arXiv 2502.04404), batched over problems.

Round 0 expands each problem's root (the prompt) with N samples. A continuation that
reaches `Goal Reached!` is a candidate, scored by the mean log-probability of its whole
response (padding excluded; tokens inherited from a rolled-back state keep the log-probs
they were sampled with). A continuation that ends in `<backtrack>` is rolled back: its last
step before `<backtrack>` is removed, giving a state (a partial response). For up to b more
rounds, the new, not-yet-visited states are expanded. The answer is the best-scored
candidate, or, with no candidate, the best-scored continuation. The verifier is never
consulted. Each candidate also carries its `value` (`LM.value`: the model's own probability of
taking no step back along it), which `selectors` can rank by instead.

How this differs from the paper's released decoder (`reference.py` follows that one):
1. Expansion draws N independent temperature samples, not HF beam-sample (`num_beams=N`).
2. Every distinct new state is re-expanded (not at most floor(sqrt(b)) per round), each
   with as many samples as continuations rolled back to it, so a round costs at most N
   samples per problem and the whole search at most (b+1)*N.
3. Candidates are ranked by their own score; identical paths are not summed (the paper's
   sum of negative scores ranks a duplicated path *below* a single one).
4. Without a candidate we return the best-scored continuation, not the first sequence of
   the last call; scores exclude padding (the paper's mean includes trailing pad/eos).
5. The rollback cut is made on tokens (at the newline token before the erroneous step), so
   no re-tokenisation happens; the paper cuts decoded text and re-tokenises it.
6. All problems and states of a round go through the model together, with a KV cache.
"""

from __future__ import annotations

from collections import defaultdict

from sbt_core.config import SearchConfig
from sbt_core.search.common import LM, Result, mean


def rollback(tokens: list[int], newline_ids: set[int]) -> list[int]:
    """The state left after removing the last step before a final `<backtrack>` token."""
    body = tokens[:-1]  # drop <backtrack>
    nls = [i for i, t in enumerate(body) if t in newline_ids]
    if nls and nls[-1] == len(body) - 1:  # `...\nERR\n<backtrack>`: ERR sits between the last two
        nls = nls[:-1]
    return body[: nls[-1] + 1] if nls else []


def self_backtrack(lm: LM, problems, cfg: SearchConfig, generator) -> list[Result]:
    n_problems = len(problems)
    prompts = [lm.prompt_ids(problem) for problem in problems]
    # A state is a partial response: (tokens, their log-probs, <backtrack> log-probs); width = samples to draw.
    frontier = [{(): ([], [], [], cfg.n)} for _ in range(n_problems)]
    visited = [{()} for _ in range(n_problems)]
    candidates = [[] for _ in range(n_problems)]
    continuations = [[] for _ in range(n_problems)]
    results = [Result(output="") for _ in range(n_problems)]
    for _round in range(cfg.backtrack_budget + 1):
        rows = [(p, state) for p in range(n_problems) for state in frontier[p].values() for _ in range(state[3])]
        if not rows:
            break
        out, passes = lm.sample(
            [prompts[p] + state[0] for p, state in rows], temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, batch_rows=cfg.batch_rows, batch_tokens=cfg.batch_tokens,
            generator=generator,
        )
        nxt = [defaultdict(lambda: None) for _ in range(n_problems)]
        seen_passes = [set() for _ in range(n_problems)]
        for r, (p, (prefix, prefix_lp, prefix_bt, _)) in enumerate(rows):
            tokens, logprobs = prefix + out.tokens[r], prefix_lp + out.logprobs[r]
            bt = None if out.watched is None else prefix_bt + out.watched[r]  # None: the engine does not give it
            text = lm.text(tokens)
            entry = {"response": text, "score": mean(logprobs), "value": lm.value(tokens, bt)}
            continuations[p].append(entry)
            results[p].generated_tokens += len(out.tokens[r])
            if passes is not None:
                seen_passes[p].add(passes[r])  # (chunk, its model calls): a call is counted once per problem
            if lm.domain.claims_goal(text):
                candidates[p].append(entry)
            elif out.tokens[r] and out.tokens[r][-1] == lm.backtrack_id:
                state = rollback(tokens, lm.newline_ids)
                key = tuple(state)
                if key in visited[p]:
                    continue
                old = nxt[p][key]
                nxt[p][key] = (state, logprobs[: len(state)], bt and bt[: len(state)], (old[3] if old else 0) + 1)
        for p in range(n_problems):
            if frontier[p]:
                results[p].rounds += 1
                results[p].forward_passes = (None if passes is None or results[p].forward_passes is None
                                             else results[p].forward_passes + sum(k for _, k in seen_passes[p]))
            visited[p].update(nxt[p].keys())
        frontier = [dict(d) for d in nxt]
    for p in range(n_problems):
        pool = candidates[p] or continuations[p]
        best = max(pool, key=lambda c: c["score"])
        results[p].output = best["response"]
        results[p].candidates = candidates[p]
    return results
