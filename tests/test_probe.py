"""Token roles (what writing each part of a response takes) and `sbt probe`'s teacher-forced accuracy by role."""

import json
from types import SimpleNamespace

import torch
from typer.testing import CliRunner

from sbt_core import build_data, io, models, probe
from sbt_core.cli import app
from sbt_core.config import BuildDataConfig
from sbt_core.domains import DOMAINS

COUNTDOWN, SUDOKU = DOMAINS["countdown"], DOMAINS["sudoku"]


def by_role(domain, response: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a, b, role in domain.roles(response):
        out.setdefault(role, []).append(response[a:b])
    return out


def test_countdown_roles_of_a_released_trace_and_of_the_compact_format():
    trace = ("Exploring Operation: 3*6=18, Resulting Numbers: [1, 18]\n"
             "Generated Node #0,0: 19:[1, 18] Operation: 3*6=18\n"
             "Moving to Node #0,0\n"
             "Current State: 19:[1, 18], Operations: ['3*6=18']\n"
             "Exploring Operation: 18-1=17, Resulting Numbers: [17]\n"
             "17,19 unequal: No Solution\n"
             "[6, 1] No Solution")
    assert by_role(COUNTDOWN, trace) == {
        "copy": ["Exploring Operation: ", ", Resulting Numbers: [1, 18]",
                 "Generated Node #0,0: 19:[1, 18] Operation: 3*6=18", "Moving to Node #0,0",
                 "Current State: 19:[1, 18], Operations: ['3*6=18']", "Exploring Operation: ",
                 ", Resulting Numbers: [17]", "17,19"],
        "choice": ["3*6", "18-1", "[6, 1]"],
        "result": ["=18", "=17"],
        "verdict": [" unequal: No Solution", " No Solution"],
    }
    assert by_role(COUNTDOWN, "11*4=44\n44+2=46\nGoal Reached!") == {
        "choice": ["11*4", "44+2"], "result": ["=44", "=46"], "verdict": ["Goal Reached!"]}
    assert by_role(COUNTDOWN, "11*4=44\n44+9=52\n<backtrack>")["verdict"] == ["<backtrack>"]
    assert COUNTDOWN.roles("not a step") == []


def test_sudoku_roles():
    text = "(2,1)=3\nguess (1,1) [2 4]=2\nnocand (1,3)\nrevert (1,1)\n(1,1)=4\nGoal Reached!"
    assert by_role(SUDOKU, text) == {
        "choice": ["(2,1)", "(1,1)", "=2", "(1,1)"], "result": ["=3", " [2 4]", "=4"], "copy": ["guess "],
        "verdict": ["nocand (1,3)", "revert (1,1)", "Goal Reached!"]}


def _rows(tmp_path, recipe="dfs_trace", n=6):
    COUNTDOWN.generate(COUNTDOWN.GenerateConfig(num_numbers=3, number_max=12, target_max=50, num_train=n,
                                                num_val_seen=0, num_val_new=0, workers=1), str(tmp_path / "data"))
    problems = io.read_parquet(str(tmp_path / "data" / "train.parquet"))
    cfg = BuildDataConfig(recipe=recipe, prompt="state")
    return build_data.build(problems, cfg, COUNTDOWN), build_data.RECIPES[recipe].vocabulary(COUNTDOWN)


class Oracle(torch.nn.Module):
    """A 'model' whose next-token guess is always right: logits from the row itself, shifted by one."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        nxt = torch.roll(input_ids, -1, dims=1)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float() * 50)


def test_an_oracle_scores_every_role_right_and_the_counts_are_the_spans_tokens(tmp_path):
    table, vocab = _rows(tmp_path)
    tok = models.build_tokenizer(vocab)
    models.prepare_tokenizer(tok)
    rows = table.to_pylist()
    got = probe.role_accuracy(Oracle(len(tok)), tok, COUNTDOWN, rows, context_length=4096, batch_rows=4)
    expect: dict[str, int] = {}
    for r in rows:  # each response token (and EOS) by the span its first character falls in
        enc = tok(r["prompt"] + r["response"], return_offsets_mapping=True)
        for role in probe.token_roles(COUNTDOWN, r["prompt"], r["response"], enc["offset_mapping"]) + ["other"]:
            if role:
                expect[role] = expect.get(role, 0) + 1
    assert {k: v["tokens"] for k, v in got.items() if v["tokens"] and k != "all"} == expect
    assert got["all"]["tokens"] == sum(expect.values())
    assert all(v["accuracy"] == 1.0 for v in got.values() if v["tokens"])
    assert got["result"]["tokens"] > 0 and got["copy"]["tokens"] > got["result"]["tokens"]


def test_sbt_probe_on_an_untrained_model_writes_json(tmp_path):
    table, vocab = _rows(tmp_path, n=4)
    data = tmp_path / "sft.parquet"
    io.write_parquet(table, str(data))
    model = models.create_tiny("1m", tmp_path / "model", vocabulary=vocab, max_positions=1024)
    out = tmp_path / "probe.json"
    res = CliRunner().invoke(app, ["probe", "--model", str(model), "--data", str(data), "--rows", "3",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| result |" in res.output and "3 rows of" in res.output
    saved = json.loads(out.read_text())
    assert saved["rows"] == 3 and saved["domain"] == "countdown" and saved["context_length"] == 1024
    assert 0 <= saved["roles"]["result"]["accuracy"] < 0.5  # an untrained model guesses, it does not compute
