"""What a trained model has learnt, by the role of each token: teacher-forced next-token accuracy and loss on SFT
rows, split by what writing the token takes (`domains.base.ROLES`: which step, its result, a verdict, a copy).

A model can fit its rows to a low mean loss by copying (a search trace restates every state) and still compute
nothing: the mean hides it, this does not. `sbt probe --model M --data sft.parquet`.
"""

from __future__ import annotations

import torch

from sbt_core.domains.base import ROLES
from sbt_core.train import data_config, encode_batch

OTHER = "other"


def token_roles(domain, prompt: str, response: str, offsets: list[tuple[int, int]]) -> list[str | None]:
    """Each token's role (None for the prompt's tokens): the role of the span its first character falls in
    (offsets ascend and spans do not overlap: one walk over both)."""
    spans, j, out = domain.roles(response), 0, []
    for start, _ in offsets:
        if start < len(prompt):
            out.append(None)
            continue
        at = start - len(prompt)
        while j < len(spans) and spans[j][1] <= at:
            j += 1
        out.append(spans[j][2] if j < len(spans) and spans[j][0] <= at else OTHER)
    return out


@torch.no_grad()
def role_accuracy(model, tokenizer, domain, rows: list[dict], *, context_length: int, batch_rows: int = 16) -> dict:
    """Per role (and `all`): supervised tokens, the share the model's argmax guesses right given the true prefix,
    and the mean loss in nats. `rows`: dicts with `prompt` and `response`; each is read up to `context_length`
    tokens (the first piece of a row SFT split). EOS counts under `other`."""
    counts = {r: [0, 0, 0.0] for r in (*ROLES, OTHER, "all")}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(rows), batch_rows):
            part = rows[s:s + batch_rows]  # (a row with nothing supervised in its first piece yields no piece)
            enc = encode_batch(tokenizer, [r["prompt"] for r in part], [r["response"] for r in part], context_length,
                               with_offsets=True)
            if not enc["input_ids"]:
                continue
            width = max(len(ids) for ids in enc["input_ids"])
            ids = torch.full((len(enc["input_ids"]), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(enc["input_ids"]):
                ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits, dim=-1).cpu()
            guess = logits.argmax(-1).cpu()
            for i, (k, labels, offs) in enumerate(zip(enc["row"], enc["labels"], enc["offsets"])):
                roles = token_roles(domain, part[k]["prompt"], part[k]["response"], offs)  # EOS: at the end, other
                for t in range(1, len(labels)):
                    if labels[t] < 0 or roles[t] is None:
                        continue
                    for key in (roles[t], "all"):
                        c = counts[key]
                        c[0] += 1
                        c[1] += int(guess[i, t - 1] == labels[t])
                        c[2] -= float(logp[i, t - 1, labels[t]])
    finally:
        model.train(was_training)
    return {r: {"tokens": n, "accuracy": right / n if n else None, "loss": nll / n if n else None}
            for r, (n, right, nll) in counts.items()}


def markdown(result: dict) -> str:
    lines = ["| role | tokens | share | next-token accuracy | loss (nats) |", "|---|---|---|---|---|"]
    total = result["all"]["tokens"] or 1
    for role, r in result.items():
        if r["tokens"]:
            lines.append(f"| {role} | {r['tokens']} | {100 * r['tokens'] / total:.1f}% | "
                         f"{100 * r['accuracy']:.1f}% | {r['loss']:.3f} |")
    return "\n".join(lines)


def run(model_path: str, data: str, *, rows: int = 200, context_length: int | None = None, domain: str | None = None,
        batch_rows: int = 16) -> dict:
    """`role_accuracy` of the model in `model_path` on the first `rows` rows of the SFT Parquet `data` (context: the
    model's own positions unless given)."""
    from sbt_core import domains, io, models

    model, tokenizer = models.load(model_path)
    table = io.read_parquet(data)
    name = domain or data_config(data).get("domain") or domains.DEFAULT
    part = table.slice(0, rows).select(["prompt", "response"]).to_pylist()
    ctx = context_length or model.config.max_position_embeddings
    return {"model": model_path, "data": data, "domain": name, "rows": len(part), "context_length": ctx,
            "roles": role_accuracy(model, tokenizer, domains.get(name), part, context_length=ctx,
                                   batch_rows=batch_rows)}
