"""The report's expert-iteration section: per round, what it searched and kept, and how its greedy and search
accuracy changed against the round before on the same problems (paired 95% intervals).

Inputs: a list, round r at position r (0 = the model expert iteration starts from), each with `eval` (its
evaluation's summary.json URI, the per-problem results beside it as `<method>/<split>/results.parquet`) and, for
r >= 1, `search` (the round's train-search results) and `distill` (the distill manifest: outputs kept, old rows
replayed).
"""

from __future__ import annotations

from sbt_core import io
from sbt_core.metrics import paired_change


def per_problem(summary_uri: str, method: str, split: str) -> dict[int, float] | None:
    """Problem id -> 1.0 if its answer passed the strict verifier, from the results beside a summary."""
    uri = io.join(io.parent(summary_uri), method, split, "results.parquet")
    if not io.exists(uri):
        return None
    table = io.read_parquet(uri).select(["id", "correct_strict"]).to_pylist()
    return {r["id"]: float(r["correct_strict"]) for r in table}


def summarise(rounds: list[dict[str, str]], methods: list[str], split: str) -> list[dict]:
    """One dict per round: searched, kept, replayed, and per method its accuracy and the paired change."""
    out, before = [], {}
    for r, parts in enumerate(rounds):
        row: dict = {"round": r}
        if "search" in parts:
            row["searched"] = io.parquet_rows(parts["search"])
            stats = io.read_json(parts["distill"]).get("stats", {})
            row["kept"], row["replayed"] = stats.get("distilled"), stats.get("replayed", 0)
        for m in methods:
            now = per_problem(parts["eval"], m, split)
            if now is None:
                continue
            cell = {"accuracy": sum(now.values()) / len(now), "problems": len(now)}
            if (prev := before.get(m)) is not None and set(prev) == set(now):
                ids = sorted(now)
                mean, lo, hi = paired_change([prev[i] for i in ids], [now[i] for i in ids])
                cell["change"] = {"mean": mean, "low": lo, "high": hi}
            row[m] = cell
            before[m] = now
        out.append(row)
    return out


def markdown(summary: list[dict], methods: list[str], held: str) -> list[str]:
    if len(summary) < 2:
        return []

    def cell(c: dict | None) -> str:
        if not c:
            return "-"
        if "change" not in c:
            return f"{100 * c['accuracy']:.1f}"
        ch = c["change"]
        return (f"{100 * c['accuracy']:.1f} ({100 * ch['mean']:+.1f} [{100 * ch['low']:+.1f}, "
                f"{100 * ch['high']:+.1f}])")

    head = " | ".join(f"`{m}` %" for m in methods)
    lines = ["", f"## Expert iteration, round by round ({held})", "",
             "Round 0 is the model expert iteration starts from. Searched: train problems the round's search ran "
             "on (with the last round's model); kept: verified outputs distilled; replayed: rows of the start "
             "model's own training set added (`expert_iteration.replay`). Accuracy in % (strict), in parentheses "
             "its change against the round before on the same problems, with its paired 95% interval.", "",
             f"| round | searched | kept | replayed | {head} |", "|---|---|---|---|" + "---|" * len(methods)]
    for row in summary:
        counts = " | ".join(str(row.get(k, "-")) for k in ("searched", "kept", "replayed"))
        lines.append(f"| {row['round']} | {counts} | " + " | ".join(cell(row.get(m)) for m in methods) + " |")
    return lines
