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

`run` is the stage entry for one model (`study.json`: curves, per-problem records, tokens/s): `decode`
per shard of problems (seeded per shard, written as JSON, runnable on other workers), `curves` over
them all; `sbt_core.reports.study` puts every model of every domain on one page.
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


def budget_rows(domain: Domain, problems: list[dict], decodes: list[list[int]], text, budgets: list[int]) -> list[dict]:
    """Per problem, at each of `budgets` (in their order): whether the decode's first B tokens verify, and how many
    tokens that is; `text(ids)` turns token ids into a response."""
    rows = []
    for p, ids in zip(problems, decodes):
        cut = [metrics.within_budget(ids, budget) for budget in budgets]
        rows.append({"solved": [domain.verify(p, text(c)).correct for c in cut], "tokens": [len(c) for c in cut]})
    return rows


def budget_points(rows: list[dict], budgets: list[int], shape: metrics.Shape) -> list[dict]:
    """The curve of `budget_rows` (made at `budgets`, in that order): accuracy, tokens and FLOPs at each budget."""
    n = len(rows)
    return [_point(sum(r["solved"][i] for r in rows) / max(n, 1), [[r["tokens"][i]] for r in rows], shape, n,
                   budget=budget) for i, budget in enumerate(budgets)]


def budget_curve(domain: Domain, problems: list[dict], decodes: list[list[int]], text, budgets: list[int],
                 shape: metrics.Shape) -> list[dict]:
    """Accuracy of one decode per problem read at each token budget; `text(ids)` turns token ids into a response."""
    budgets = sorted(budgets)
    return budget_points(budget_rows(domain, problems, decodes, text, budgets), budgets, shape)


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


def decodes_per_problem(cfg, kind: str) -> int:
    """Decodes `decode` makes per problem (what a progress bar counts): greedy and sampled, the samples' one
    batch, or greedy and each search."""
    return {"budget": 2, "samples": 1, "search": 1 + len(cfg.search_methods)}[kind]


def decode(lm, problems: list[dict], cfg, kind: str, *, max_new_tokens: int, seed: int, progress=None) -> dict:
    """What `kind` decodes for `problems` (`cfg`: a `config.StudyEvalConfig`), sampling from `seed`: per problem,
    as JSON, what the curves are read from (`rows`, see `curves`), with the tokens generated and the seconds taken."""
    import torch

    from sbt_core.config import SearchConfig, method_config
    from sbt_core.search.common import make_generator
    from sbt_core.search.decoders import sample_n
    from sbt_core.search.run import search

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    d = lm.domain
    device = lm.device
    torch.manual_seed(seed)
    rows: list[dict] = [{} for _ in problems]
    generated, t0 = 0, time.perf_counter()
    if kind == "budget":
        prompts = [lm.prompt_ids(p) for p in problems]
        for name, temperature in (("greedy", 0.0), ("sampled", cfg.temperature)):
            out, _ = lm.sample(prompts, temperature=temperature, max_new_tokens=max(cfg.budgets),
                               batch_rows=cfg.batch_rows, batch_tokens=cfg.batch_tokens,
                               generator=make_generator(seed, device))
            generated += sum(len(t) for t in out.tokens)
            read = budget_rows(d, problems, out.tokens, lm.text, cfg.budgets)
            for row, at, record in zip(rows, read, _decode_records(d, problems, out.tokens, lm.text)):
                row[name] = {**at, "record": record}
            if progress:
                progress(len(problems))
    elif kind == "samples":
        search_cfg = SearchConfig(max_new_tokens=cfg.direct_max_new_tokens, batch_rows=cfg.batch_rows,
                                  batch_tokens=cfg.batch_tokens, **cfg.inference())
        samples = [s for s, _ in sample_n(lm, problems, search_cfg, max(cfg.ns), cfg.temperature,
                                          make_generator(seed, device))]
        generated = sum(k for ss in samples for _, _, k, _ in ss)
        for row, ss, right in zip(rows, samples, verified(d, problems, samples)):
            row.update(samples=[list(s) for s in ss], right=right)
        if progress:
            progress(len(problems))
    else:
        for method in ["greedy", *cfg.search_methods]:
            search_cfg = method_config(method, temperature=cfg.temperature, max_new_tokens=max_new_tokens,
                                       batch_rows=cfg.batch_rows, batch_tokens=cfg.batch_tokens, seed=seed,
                                       **cfg.inference())
            results = search(lm, problems, search_cfg)
            generated += sum(r.generated_tokens for r in results)
            for row, p, r in zip(rows, problems, results):
                row[method] = {"solved": d.verify(p, r.output).correct, "tokens": r.generated_tokens,
                               "candidates": len(r.candidates),
                               **({"dead_ends": d.dead_ends(r.output)} if method == "greedy" else {})}
            if progress:
                progress(len(problems))
    return {"rows": rows, "generated_tokens": generated, "seconds": time.perf_counter() - t0}


def curves(domain: Domain, problems: list[dict], rows: list[dict], cfg, kind: str,
           shape: metrics.Shape) -> tuple[dict, dict]:
    """(curves, per-problem records) of `kind` from `decode`'s rows, in the order of `problems`."""
    from sbt_core.search.registry import METHODS

    if kind == "budget":
        return ({name: budget_points([r[name] for r in rows], cfg.budgets, shape) for name in ("greedy", "sampled")},
                {name: [r[name]["record"] for r in rows] for name in ("greedy", "sampled")})
    if kind == "samples":
        right = [r["right"] for r in rows]
        samples = [[tuple(s) for s in r["samples"]] for r in rows]
        return sample_curves(domain, problems, samples, cfg.ns, shape, right), {"samples": _sample_records(right)}
    points = []
    for method in ["greedy", *cfg.search_methods]:
        per = [r[method] for r in rows]
        # `candidates` decodes of equal length per problem (module docstring).
        lengths = [[x["tokens"] // max(x["candidates"], 1)] * max(x["candidates"], 1) for x in per]
        m = METHODS[method]
        points.append(_point(sum(x["solved"] for x in per) / max(len(per), 1), lengths, shape, len(per),
                             method=method, b=m.get("backtrack_budget", 0), N=m.get("n", 1)))
    records = {"greedy": [{k: r["greedy"][k] for k in ("solved", "tokens", "dead_ends")} for r in rows]}
    return {"greedy": points[:1], "search": sorted(points[1:], key=lambda x: x["flops_measured"])}, records


def _result(domain: Domain, problems: list[dict], parts: list[dict], cfg, kind: str, shape: metrics.Shape) -> dict:
    """One model's curves from the `decode` parts covering `problems`, in order."""
    found, records = curves(domain, problems, [r for part in parts for r in part["rows"]], cfg, kind, shape)
    seconds, generated = sum(p["seconds"] for p in parts), sum(p["generated_tokens"] for p in parts)
    return {"kind": kind, "problems": len(problems), "shape": shape.__dict__, "curves": found, "records": records,
            "seconds": seconds, "generated_tokens": generated,
            "tokens_per_second": generated / seconds if seconds else None}


def evaluate(lm, problems: list[dict], cfg, kind: str, *, max_new_tokens: int, progress=None) -> dict:
    """One model's curves on `problems` decoded in one piece, sampling from `cfg.seed` (what `run` gives when they
    fit one shard); see the module docstring."""
    part = decode(lm, problems, cfg, kind, max_new_tokens=max_new_tokens, seed=cfg.seed, progress=progress)
    return _result(lm.domain, problems, [part], cfg, kind, metrics.Shape.of(lm.config))


def shard_uri(out_dir: str, k: int) -> str:
    from sbt_core import io

    return io.join(out_dir, "shards", f"shard-{k:05d}.json")


def _problems(data_dir: str, cfg, domain: str) -> tuple[str, str, list[dict]]:
    """(split, its URI, its first `cfg.limit` problems)."""
    from sbt_core import io

    d = domains.get(domain)
    split = cfg.split or d.eval_splits[-1]
    data_uri = io.join(data_dir, f"{split}.parquet")
    return split, data_uri, io.read_parquet(data_uri).slice(0, cfg.limit).select(list(d.columns)).to_pylist()


def _decode_shard(lm, problems: list[dict], cfg, kind: str, k: int, out_dir: str, max_new_tokens: int,
                  progress=None) -> dict:
    """Shard k of `problems` (seed `cfg.seed + k`), written to its file and read back (what a gather reads)."""
    from sbt_core import io

    part = problems[k * cfg.shard_size:(k + 1) * cfg.shard_size]
    found = decode(lm, part, cfg, kind, max_new_tokens=max_new_tokens, seed=cfg.seed + k, progress=progress)
    return io.read_json(io.write_json({"shape": metrics.Shape.of(lm.config).__dict__, **found},
                                      shard_uri(out_dir, k)))


def _config(cfg, kind: str):
    from sbt_core.config import StudyEvalConfig

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return StudyEvalConfig.model_validate(cfg)


def missing_shards(model_path: str, data_dir: str, out_dir: str, cfg, *, kind: str, domain: str = domains.DEFAULT,
                   max_new_tokens: int = 64) -> list:
    """The shards of this study-eval not yet written, as units another process can run (`run_shards`)."""
    from sbt_core import io
    from sbt_core.search.common import Shard

    cfg = _config(cfg, kind)
    _, _, problems = _problems(data_dir, cfg, domain)
    args = {"model_path": str(model_path), "data_dir": str(data_dir), "out_dir": str(out_dir),
            "cfg": cfg.model_dump(mode="json"), "kind": kind, "domain": domain, "max_new_tokens": max_new_tokens}
    return [Shard(f"shard-{k:05d}", f"{__name__}:run_shards", {**args, "shards": [k]})
            for k in range(-(-len(problems) // cfg.shard_size)) if not io.exists(shard_uri(out_dir, k))]


def run_shards(model_path: str, data_dir: str, out_dir: str, cfg, *, kind: str, shards: list[int],
               domain: str = domains.DEFAULT, max_new_tokens: int = 64) -> list[str]:
    """Write the given shards of a study-eval (those not written yet): what one fanned-out unit runs."""
    from sbt_core import io
    from sbt_core.search.run import lazy_lm, release

    cfg = _config(cfg, kind)
    _, _, problems = _problems(data_dir, cfg, domain)
    get_lm = lazy_lm(model_path, domain, inference=cfg.inference())
    for k in shards:
        if not io.exists(shard_uri(out_dir, k)):
            _decode_shard(get_lm(), problems, cfg, kind, k, out_dir, max_new_tokens)
    release(get_lm)
    return [shard_uri(out_dir, k) for k in shards]


def run(model_path: str, data_dir: str, out_dir: str, cfg, *, kind: str, domain: str = domains.DEFAULT,
        max_new_tokens: int = 64, progress=None, fan_out=None) -> dict[str, str]:
    """Stage entry: one model's curves on the study's split (`cfg`: `StudyEvalConfig`); writes `study.json`.

    The problems are decoded in shards of `cfg.shard_size`, shard k sampling from seed `cfg.seed + k` and written
    to `shards/` as it finishes, so a killed stage resumes from its last shard and the shards can run at once on
    other workers: `fan_out(units)`, if given, runs the missing ones elsewhere (see `search.run.run`) and this
    process only gathers them, loading no model. The bytes do not depend on where the shards ran (but the wall
    time: `seconds`, `tokens_per_second`)."""
    from sbt_core import io
    from sbt_core.search.run import lazy_lm, release

    cfg = _config(cfg, kind)
    d = domains.get(domain)
    split, data_uri, problems = _problems(data_dir, cfg, domain)
    if fan_out is not None:
        fan_out(missing_shards(model_path, data_dir, out_dir, cfg, kind=kind, domain=domain,
                               max_new_tokens=max_new_tokens))
    get_lm, parts = lazy_lm(model_path, domain, inference=cfg.inference()), []
    for k in range(-(-len(problems) // cfg.shard_size)):
        uri = shard_uri(out_dir, k)
        if io.exists(uri):  # finished before a kill, or by a fanned-out unit: keep it
            parts.append(io.read_json(uri))
            if progress:
                progress(decodes_per_problem(cfg, kind) * len(parts[-1]["rows"]))
        elif fan_out is not None:
            raise RuntimeError(f"{uri}: its fanned-out unit completed without writing it")
        else:
            parts.append(_decode_shard(get_lm(), problems, cfg, kind, k, out_dir, max_new_tokens, progress))
    shape = metrics.Shape(**parts[0]["shape"]) if parts else metrics.Shape.of(get_lm().config)
    release(get_lm)
    result = {"domain": domain, "model": str(model_path), "split": split,
              **_result(d, problems, parts, cfg, kind, shape)}
    uri = io.write_json(result, io.join(out_dir, "study.json"))
    config = {"study": cfg.model_dump(mode="json"), "kind": kind, "domain": domain, "max_new_tokens": max_new_tokens}
    io.write_manifest(out_dir, "study", config, [data_uri], {"study": uri})
    return {"study": uri}
