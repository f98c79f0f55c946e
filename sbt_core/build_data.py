"""SFT data from generated problems, by recipe. A recipe is one function plus one line in `RECIPES`.

- `optimal`: D_op, each problem's optimal path.
- `self_backtrack`: D_op ∪ D_back (Self-Backtracking, arXiv 2502.04404). A D_back row is a prefix
  of the optimal path of random length (0 to len-1 steps), one erroneous step, then `<backtrack>`;
  the step's type is drawn with `error_type_ratio` over the domain's three error types (Countdown:
  exploration, computational, rule_violation; Sudoku: exploration, conflict, given).
  `computational_at_target` (Countdown; default 0, the paper's data) makes that share of the
  computational errors the false claim a small model makes: the last step bent onto the target.
- `dfs_trace`, `mix_trace`, `think_trace`: one search trace per problem (arXiv 2504.07052), failed
  searches kept; `direct`: one solution path written in the trace vocabulary. The domain writes them
  (`Domain.trace`) in `trace_format` (Countdown: the released generator's text by default); a domain
  that has no such style refuses the recipe when the config is loaded. Their rows' prompt is the
  trace's first line by default (`prompt: state`, the released evaluation's prompt), the response the
  rest of the trace.

Rows: id, problem_id, the domain's problem columns, prompt, response, kind, error_type, prefix_len
(steps before the erroneous one on D_back rows, the number of response lines otherwise). The
manifest records the token lengths (prompt + response, the tiny tokenizer of the recipe's
vocabulary) per kind: mean, median, max.

Run: `sbt build-data --data data/countdown --out data/sft --recipe self_backtrack`.
"""

from __future__ import annotations

import logging
import numpy as np
import pyarrow as pa

from sbt_core import domains, io
from sbt_core.config import BuildDataConfig
from sbt_core.domains import Domain
from sbt_core.recipes import RECIPES

log = logging.getLogger(__name__)


def build(problems: pa.Table, cfg: BuildDataConfig, domain: Domain) -> pa.Table:
    """The recipe's rows for every problem (schema in the module docstring)."""
    if cfg.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {cfg.recipe!r}; choose from {sorted(RECIPES)}")
    recipe = RECIPES[cfg.recipe]
    recipe.check(domain, "recipe")
    recipe.check_data(cfg, domain, "build_data")
    form = recipe.prompt_form(domain, cfg)
    rng = np.random.default_rng([cfg.seed, 2])
    stats = domain.data_stats(problems)
    cols = ("problem_id", *domain.columns, "prompt", "response", "kind", "error_type", "prefix_len")
    rows: dict[str, list] = {k: [] for k in cols}
    for problem in problems.to_pylist():
        prompt = domain.prompt(problem, form)
        for ex in recipe.build(domain, problem, rng, cfg, stats):
            response = ex.response
            if form == "state":  # the trace's first line is the prompt: the rest (maybe nothing) is the response
                first, _, response = response.partition("\n")
                if first + "\n" != prompt:
                    raise ValueError(f"problem {problem['id']}: its trace does not start with the prompt {prompt!r}")
            for k, v in zip(cols, (problem["id"], *(problem[c] for c in domain.columns), prompt, response,
                                   ex.kind, ex.error_type, ex.prefix_len)):
                rows[k].append(v)
    table = {"id": pa.array(range(len(rows["kind"])), pa.int64())}
    for k in cols:
        kind = problems.schema.field(k).type if k in domain.columns else None
        table[k] = pa.array(rows[k], kind or (pa.int64() if k in ("problem_id", "prefix_len") else pa.string()))
    return pa.table(table)


def token_lengths(table: pa.Table, vocabulary: str) -> dict[str, dict[str, float]]:
    """Tokens of prompt + response (+ EOS) per row kind and over all rows: mean, median, max."""
    from sbt_core.models import build_tokenizer

    tok = build_tokenizer(vocabulary)
    texts = [p + r for p, r in zip(table["prompt"].to_pylist(), table["response"].to_pylist())]
    lengths = np.asarray([len(ids) + 1 for ids in tok(texts, add_special_tokens=False)["input_ids"]]) if texts else \
        np.zeros(0)
    kinds = np.asarray(table["kind"].to_pylist())
    out = {}
    for name in ["all", *sorted(set(kinds.tolist()))]:
        sel = lengths if name == "all" else lengths[kinds == name]
        out[name] = {"rows": int(len(sel)), "mean": round(float(sel.mean()), 1) if len(sel) else 0.0,
                     "median": float(np.median(sel)) if len(sel) else 0.0, "max": int(sel.max()) if len(sel) else 0}
    return out


def run(cfg: BuildDataConfig, problems_uri: str, out_dir: str, domain: str = domains.DEFAULT) -> dict[str, str]:
    """Stage entry: read the train problems, write `sft.parquet` and the manifest (with token lengths)."""
    d = domains.get(domain)
    table = build(io.read_parquet(problems_uri), cfg, d)
    uri = io.write_parquet(table, io.join(out_dir, "sft.parquet"))
    vocabulary = RECIPES[cfg.recipe].vocabulary(d)
    lengths = token_lengths(table, vocabulary)
    config = {**cfg.model_dump(mode="json"), "domain": domain, "vocabulary": vocabulary,
              "prompt": RECIPES[cfg.recipe].prompt_form(d, cfg)}
    io.write_manifest(out_dir, "build_data", config, [problems_uri], {"sft": uri}, {"token_lengths": lengths})
    log.info("build-data (%s, %s): %d rows, tokens %s", domain, cfg.recipe, len(table), lengths["all"])
    return {"sft": uri}
