"""Compute-matched evaluation (arXiv 2504.07052): a model's accuracy against decode FLOPs per problem.

Three ways to spend test-time compute, on one axis:

- a model that writes its search (DFS / mix / think traces) decodes **once**, greedy and sampled, up
  to the largest token budget; `budget_curve` reads that one decode at every budget B (solved when
  the first B tokens already verify), with L = min(length, B) generated tokens;
- a direct-solution model samples **n** answers; `sample_curves` draws the largest n once and reads
  every smaller n from the same samples: pass@n by the unbiased estimator over all samples (the
  verifier picks: an upper bound, as the paper's best-of-n is), best-of-n by the model's mean
  log-probability and majority vote over the first n (verifier-free), with L the samples' tokens;
- a self-backtracking model (arXiv 2502.04404) runs greedy and the search at each (b, N) of
  `search_methods`: one point each, its tokens all the search generated.

FLOPs per problem come from `metrics.decode_flops` twice: summed over the decodes with their own
measured lengths (`flops_measured`), and by the paper's formula at the mean length
(`flops_formula`). A search's decodes continue from prefixes of earlier ones; its FLOPs count its
generated tokens as `candidates` decodes of equal length (the re-read prefixes are left out).

`run` is the stage entry for one model (`study.json`: curves, per-problem records, tokens/s);
`sbt_core.reports.study` puts every model of every domain on one page.
"""

from __future__ import annotations

import time

from sbt_core import domains, metrics, selectors
from sbt_core.domains import Domain

KINDS = ("budget", "samples", "search")


def _point(accuracy: float, lengths: list[list[int]], shape: metrics.Shape, problems: int, **key) -> dict:
    """One curve point: accuracy, tokens and FLOPs per problem; `lengths[p]` are problem p's decode lengths."""
    div = max(problems, 1)
    tokens = sum(sum(ls) for ls in lengths) / div
    measured = sum(metrics.decode_flops(shape, L) for ls in lengths for L in ls) / div
    per_problem = max((len(ls) for ls in lengths), default=1)
    mean_len = round(tokens / max(per_problem, 1))
    return {**key, "accuracy": accuracy, "problems": problems, "tokens_per_problem": tokens,
            "flops_measured": measured, "flops_formula": metrics.decode_flops(shape, mean_len, per_problem)}


def budget_curve(domain: Domain, problems: list[dict], decodes: list[list[int]], text, budgets: list[int],
                 shape: metrics.Shape) -> list[dict]:
    """Accuracy of one decode per problem read at each token budget; `text(ids)` turns token ids into a response."""
    points = []
    for budget in sorted(budgets):
        cut = [metrics.within_budget(ids, budget) for ids in decodes]
        solved = sum(domain.verify(p, text(ids)).correct for p, ids in zip(problems, cut))
        points.append(_point(solved / max(len(problems), 1), [[len(ids)] for ids in cut], shape, len(problems),
                             budget=budget))
    return points


def verified(domain: Domain, problems: list[dict], samples) -> list[list[bool]]:
    """Whether each (text, score, tokens) sample of each problem passes the strict verifier."""
    return [[domain.verify(p, t).correct for t, *_ in ss] for p, ss in zip(problems, samples)]


def sample_curves(domain: Domain, problems: list[dict], samples: list[list[tuple[str, float, int]]], ns: list[int],
                  shape: metrics.Shape, right: list[list[bool]] | None = None) -> dict[str, list[dict]]:
    """pass@n, best-of-n (log-prob) and majority@n for every n in `ns` from (text, mean log-prob, tokens) samples;
    `right[p][i]`: whether sample i of problem p verifies (computed when not given)."""
    right = right or verified(domain, problems, samples)
    curves: dict[str, list[dict]] = {"pass_at_n": [], "best_of_n": [], "majority_at_n": []}
    div = max(len(problems), 1)
    for n in sorted(ns):
        if any(len(ss) < n for ss in samples):
            raise ValueError(f"n={n} needs at least {n} samples per problem")
        lengths = [[k for _, _, k, _ in ss[:n]] for ss in samples]
        pass_n = sum(metrics.pass_at_k(len(r), sum(r), n) for r in right) / div
        best = sum(r[max(range(n), key=lambda i: ss[i][1])] for ss, r in zip(samples, right)) / div
        # The majority decoder's rule (`selectors`' `majority`) on the first n samples; with no readable
        # answer there is no right sample either (a right answer always has one), so that problem counts 0.
        votes = sum(r[selectors.choose("majority", [{"response": t, "score": sc} for t, sc, *_ in ss[:n]], domain)]
                    for ss, r in zip(samples, right))
        for name, acc in (("pass_at_n", pass_n), ("best_of_n", best), ("majority_at_n", votes / div)):
            curves[name].append(_point(acc, lengths, shape, len(problems), n=n))
    return curves


def _decode_records(domain: Domain, problems: list[dict], decodes: list[list[int]], text) -> list[dict]:
    """Per problem: solved (whole decode), tokens, and the wrong branches written before the answer."""
    out = []
    for p, ids in zip(problems, decodes):
        response = text(ids)
        out.append({"solved": domain.verify(p, response).correct, "tokens": len(ids),
                    "dead_ends": domain.dead_ends(response)})
    return out


def _sample_records(right: list[list[bool]]) -> list[dict]:
    """Per problem: right samples of n, the first right one (1-based), and the samples expected until the
    first right one in a random order, (n + 1) / (c + 1)."""
    out = []
    for r in right:
        c = sum(r)
        out.append({"right": c, "n": len(r), "first_right": r.index(True) + 1 if c else None,
                    "expected_samples": (len(r) + 1) / (c + 1) if c else None})
    return out


def decode_length(cfg, kind: str, max_new_tokens: int) -> int:
    """The longest decode `evaluate` makes for `kind` (`cfg`: a `config.StudyEvalConfig`; `max_new_tokens`:
    one search continuation's limit)."""
    return {"budget": max(cfg.budgets), "samples": cfg.direct_max_new_tokens, "search": max_new_tokens}[kind]


def evaluate(lm, problems: list[dict], cfg, kind: str, *, max_new_tokens: int, progress=None) -> dict:
    """One model's curves on `problems` (`cfg`: a `config.StudyEvalConfig`); see the module docstring."""
    import torch

    from sbt_core.config import SearchConfig, method_config
    from sbt_core.search.registry import METHODS
    from sbt_core.search.common import make_generator
    from sbt_core.search.decoders import sample_n
    from sbt_core.search.run import search

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    d, shape = lm.domain, metrics.Shape.of(lm.model.config)
    device = next(lm.model.parameters()).device
    torch.manual_seed(cfg.seed)
    curves, records, generated = {}, {}, 0
    t0 = time.perf_counter()
    if kind == "budget":
        prompts = [lm.prompt_ids(p) for p in problems]
        for name, temperature in (("greedy", 0.0), ("sampled", cfg.temperature)):
            out, _ = lm.sample(prompts, temperature=temperature, max_new_tokens=max(cfg.budgets),
                               batch_rows=cfg.batch_rows, batch_tokens=cfg.batch_tokens,
                               generator=make_generator(cfg.seed, device))
            generated += sum(len(t) for t in out.tokens)
            curves[name] = budget_curve(d, problems, out.tokens, lm.text, cfg.budgets, shape)
            records[name] = _decode_records(d, problems, out.tokens, lm.text)
            if progress:
                progress(len(problems))
    elif kind == "samples":
        search_cfg = SearchConfig(max_new_tokens=cfg.direct_max_new_tokens, batch_rows=cfg.batch_rows,
                                  batch_tokens=cfg.batch_tokens)
        samples = [s for s, _ in sample_n(lm, problems, search_cfg, max(cfg.ns), cfg.temperature,
                                          make_generator(cfg.seed, device))]
        generated = sum(k for ss in samples for _, _, k, _ in ss)
        right = verified(d, problems, samples)
        curves = sample_curves(d, problems, samples, cfg.ns, shape, right)
        records["samples"] = _sample_records(right)
        if progress:
            progress(len(problems))
    else:
        points = []
        for method in ["greedy", *cfg.search_methods]:
            search_cfg = method_config(method, temperature=cfg.temperature, max_new_tokens=max_new_tokens,
                                       batch_rows=cfg.batch_rows, batch_tokens=cfg.batch_tokens, seed=cfg.seed)
            results = search(lm, problems, search_cfg)
            generated += sum(r.generated_tokens for r in results)
            correct = [d.verify(p, r.output).correct for p, r in zip(problems, results)]
            solved = sum(correct)
            # `candidates` decodes of equal length per problem (module docstring).
            lengths = [[r.generated_tokens // max(len(r.candidates), 1)] * max(len(r.candidates), 1)
                       for r in results]
            m = METHODS[method]
            points.append(_point(solved / max(len(problems), 1), lengths, shape, len(problems), method=method,
                                 b=m.get("backtrack_budget", 0), N=m.get("n", 1)))
            if method == "greedy":
                records["greedy"] = [{"solved": ok, "tokens": r.generated_tokens, "dead_ends": d.dead_ends(r.output)}
                                     for ok, r in zip(correct, results)]
            if progress:
                progress(len(problems))
        curves = {"greedy": points[:1], "search": sorted(points[1:], key=lambda x: x["flops_measured"])}
    seconds = time.perf_counter() - t0
    return {"kind": kind, "problems": len(problems), "shape": shape.__dict__, "curves": curves, "records": records,
            "seconds": seconds, "generated_tokens": generated, "tokens_per_second": generated / seconds if seconds else None}


def run(model_path: str, data_dir: str, out_dir: str, cfg, *, kind: str, domain: str = domains.DEFAULT,
        max_new_tokens: int = 64, progress=None) -> dict[str, str]:
    """Stage entry: one model's curves on the study's split (`cfg`: `StudyEvalConfig`); writes `study.json`."""
    import torch

    from sbt_core import io
    from sbt_core.models import load
    from sbt_core.search.common import LM

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    d = domains.get(domain)
    split = cfg.split or d.eval_splits[-1]
    data_uri = io.join(data_dir, f"{split}.parquet")
    table = io.read_parquet(data_uri)
    problems = table.slice(0, cfg.limit).select(list(d.columns)).to_pylist()
    lm = LM(*load(model_path, device="cuda" if torch.cuda.is_available() else "cpu"), d)
    result = {"domain": domain, "model": str(model_path), "split": split,
              **evaluate(lm, problems, cfg, kind, max_new_tokens=max_new_tokens, progress=progress)}
    uri = io.write_json(result, io.join(out_dir, "study.json"))
    config = {"study": cfg.model_dump(mode="json"), "kind": kind, "domain": domain, "max_new_tokens": max_new_tokens}
    io.write_manifest(out_dir, "study", config, [data_uri], {"study": uri})
    return {"study": uri}
