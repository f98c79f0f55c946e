"""Compute-matched evaluation (arXiv 2504.07052): a model's accuracy against decode FLOPs per problem.

Two ways to spend test-time compute, on one axis:

- a model that writes its search (DFS / mix / think traces) decodes **once**, up to the largest token
  budget; `budget_curve` reads that one decode at every budget B (solved when the first B tokens
  already verify), with L = min(length, B) generated tokens;
- a direct-solution model samples **n** answers; `sample_curves` draws the largest n once and reads
  every smaller n from the same samples: pass@n by the unbiased estimator over all samples (the
  verifier picks: an upper bound, as the paper's best-of-n is), best-of-n by the model's mean
  log-probability and majority vote over the first n (verifier-free), with L the samples' tokens.

FLOPs per problem come from `metrics.decode_flops` twice: per sample with its own measured length
(`flops_measured`), and by the paper's formula at the mean length (`flops_formula`).
"""

from __future__ import annotations

from collections import Counter

from sbt_core import metrics
from sbt_core.domains import Domain


def _point(accuracy: float, lengths: list[list[int]], shape: metrics.Shape, **key) -> dict:
    """One curve point: accuracy, tokens and FLOPs per problem; `lengths[p]` are problem p's sample lengths."""
    n_problems = max(len(lengths), 1)
    tokens = sum(sum(ls) for ls in lengths) / n_problems
    measured = sum(metrics.decode_flops(shape, L) for ls in lengths for L in ls) / n_problems
    per_sample = max((len(ls) for ls in lengths), default=1)
    mean_len = round(tokens / max(per_sample, 1))
    return {**key, "accuracy": accuracy, "tokens_per_problem": tokens, "flops_measured": measured,
            "flops_formula": metrics.decode_flops(shape, mean_len, per_sample)}


def budget_curve(domain: Domain, problems: list[dict], decodes: list[list[int]], text, budgets: list[int],
                 shape: metrics.Shape) -> list[dict]:
    """Accuracy of one decode per problem read at each token budget; `text(ids)` turns token ids into a response."""
    points = []
    for budget in sorted(budgets):
        cut = [metrics.within_budget(ids, budget) for ids in decodes]
        solved = sum(domain.verify(p, text(ids)).correct for p, ids in zip(problems, cut))
        points.append(_point(solved / max(len(problems), 1), [[len(ids)] for ids in cut], shape, budget=budget))
    return points


def sample_curves(domain: Domain, problems: list[dict], samples: list[list[tuple[str, float, int]]], ns: list[int],
                  shape: metrics.Shape) -> dict[str, list[dict]]:
    """pass@n, best-of-n (log-prob) and majority@n for every n in `ns` from (text, mean log-prob, tokens) samples."""
    right = [[domain.verify(p, t).correct for t, _, _ in ss] for p, ss in zip(problems, samples)]
    curves: dict[str, list[dict]] = {"pass_at_n": [], "best_of_n": [], "majority_at_n": []}
    div = max(len(problems), 1)
    for n in sorted(ns):
        if any(len(ss) < n for ss in samples):
            raise ValueError(f"n={n} needs at least {n} samples per problem")
        lengths = [[k for _, _, k in ss[:n]] for ss in samples]
        pass_n = sum(metrics.pass_at_k(len(r), sum(r), n) for r in right) / div
        best = sum(r[max(range(n), key=lambda i: ss[i][1])] for ss, r in zip(samples, right)) / div
        votes = 0
        for ss, r in zip(samples, right):
            keys = [domain.answer_key(t) for t, _, _ in ss[:n]]
            counted = Counter(k for k in keys if k is not None)
            if counted:
                top = max(counted.values())
                # Ties go to the answer with the best-scored sample, as the majority decoder does.
                winner = max((i for i, k in enumerate(keys) if k is not None and counted[k] == top),
                             key=lambda i: ss[i][1])
                votes += r[winner]
        for name, acc in (("pass_at_n", pass_n), ("best_of_n", best), ("majority_at_n", votes / div)):
            curves[name].append(_point(acc, lengths, shape, n=n))
    return curves


def run(model_path: str, data_uri: str, out_dir: str, *, kind: str, domain: str = "countdown",
        budgets: tuple[int, ...] = (256, 512, 1024), ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
        temperature: float = 0.7, max_new_tokens: int = 512, batch_rows: int = 2048, limit: int | None = None,
        seed: int = 4) -> dict[str, str]:
    """Stage entry: one model's compute curve(s) on a split; writes `study.json` and the manifest.

    `kind="budget"`: one greedy decode up to the largest budget, read at every budget (a trace model);
    `kind="samples"`: max(ns) samples at `temperature`, read at every n (a direct model).
    """
    import time

    import torch

    from sbt_core import domains, io
    from sbt_core.config import SearchConfig
    from sbt_core.models import load
    from sbt_core.search.common import LM, make_generator
    from sbt_core.search.decoders import sample_n

    if kind not in ("budget", "samples"):
        raise ValueError(f"kind must be 'budget' or 'samples', got {kind!r}")
    d = domains.get(domain)
    table = io.read_parquet(data_uri)
    problems = table.slice(0, limit).select(list(d.columns)).to_pylist() if limit else \
        table.select(list(d.columns)).to_pylist()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = LM(*load(model_path, device=device), d)
    shape = metrics.Shape.of(lm.model.config)
    torch.manual_seed(seed)
    generator = make_generator(seed, device)
    t0 = time.perf_counter()
    if kind == "budget":
        out, _ = lm.sample([lm.prompt_ids(p) for p in problems], temperature=0.0, max_new_tokens=max(budgets),
                           batch_rows=batch_rows, generator=generator)
        generated = sum(len(t) for t in out.tokens)
        curves = {"budget": budget_curve(d, problems, out.tokens, lm.text, list(budgets), shape)}
    else:
        cfg = SearchConfig(max_new_tokens=max_new_tokens, batch_rows=batch_rows)
        samples = [s for s, _ in sample_n(lm, problems, cfg, max(ns), temperature, generator)]
        generated = sum(k for ss in samples for _, _, k in ss)
        curves = sample_curves(d, problems, samples, list(ns), shape)
    seconds = time.perf_counter() - t0
    result = {"kind": kind, "domain": domain, "model": str(model_path), "problems": len(problems),
              "shape": shape.__dict__, "curves": curves, "seconds": seconds,
              "tokens_per_second": generated / seconds if seconds else None}
    uri = io.write_json(result, io.join(out_dir, "study.json"))
    config = {"kind": kind, "domain": domain, "budgets": list(budgets), "ns": list(ns), "temperature": temperature,
              "max_new_tokens": max_new_tokens, "limit": limit, "seed": seed}
    io.write_manifest(out_dir, "study", config, [data_uri], {"study": uri})
    return {"study": uri}
