"""Token lengths of every recipe in every domain: the README's table (prompt + response + EOS, in
the tiny tokenizer of the recipe's vocabulary; mean / median / max over the rows of that kind).

    python scripts/token_lengths.py [--problems 500]
"""

from __future__ import annotations

import argparse
import tempfile

from sbt_core import build_data, domains, io
from sbt_core.config import BuildDataConfig

SETTINGS = [
    ("countdown", "3 numbers in [1, 30] (tiny)", dict(num_numbers=3, number_max=30, num_val_seen=0, num_val_new=0)),
    ("countdown", "4 numbers in [1, 99] (the papers)", dict(num_numbers=4, num_val_seen=0, num_val_new=0)),
    ("sudoku", "4x4, minimal", dict(size=4, num_val=0)),
    ("sudoku", "6x6, minimal", dict(size=6, num_val=0)),
    ("sudoku", "9x9, minimal", dict(size=9, num_val=0)),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=500)
    args = ap.parse_args()
    print("| domain | setting | recipe | rows | kind | mean | median | max |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label, opts in SETTINGS:
        d = domains.get(name)
        with tempfile.TemporaryDirectory() as tmp:
            d.generate(d.GenerateConfig(num_train=args.problems, workers=1, **opts), tmp)
            problems = io.read_parquet(f"{tmp}/train.parquet")
        for recipe, spec in build_data.RECIPES.items():
            if spec.style and spec.style not in d.trace_styles:
                continue
            table = build_data.build(problems, BuildDataConfig(recipe=recipe), d)
            for kind, s in build_data.token_lengths(table, spec.vocabulary(d)).items():
                if kind == "all" and len(set(table["kind"].to_pylist())) == 1:
                    continue
                print(f"| {name} | {label} | {recipe} | {s['rows']} | {kind} | {s['mean']:.0f} | {s['median']:.0f} | "
                      f"{s['max']} |")


if __name__ == "__main__":
    main()
