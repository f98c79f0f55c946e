"""The domain seam, Sudoku, the trace recipes and their verifiers: specifications, not smoke."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sbt_core import build_data, io, train
from sbt_core.config import BuildDataConfig
from sbt_core.domains import BACKTRACK, DOMAINS, GOAL
from sbt_core.domains.countdown import trace as cd_trace
from sbt_core.domains.sudoku import grid, solver
from sbt_core.domains.sudoku.config import GenerateConfig as SudokuConfig
from sbt_core.models import NUMBERS, VOCABULARIES, build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
COUNTDOWN, SUDOKU = DOMAINS["countdown"], DOMAINS["sudoku"]


# --- the seam ----------------------------------------------------------------------------------

def test_nothing_outside_the_domains_folder_imports_a_specific_domain():
    leaks = []
    for top in ("sbt_core", "tasks", "flows", "deployments", "benchmarks", "scripts"):
        for path in (ROOT / top).rglob("*.py"):
            if (ROOT / "sbt_core" / "domains") in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module \
                    else []
                leaks += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if re.match(r"sbt_core\.(domains\.)?(countdown|sudoku)\b", n)]
    assert leaks == []


def _domain_words() -> set[str]:
    """What only some domains have: their names, eval splits, problem columns, generator fields and error
    types (a name every domain shares, such as `train` or `seed`, or a field of the shared configs, such as a
    model's `size`, is no domain's)."""
    from pydantic import BaseModel

    from sbt_core import config

    ds = list(DOMAINS.values())
    words = set(DOMAINS)
    for part in (lambda d: set(d.eval_splits) | {"train"}, lambda d: set(d.columns),
                 lambda d: set(d.GenerateConfig.model_fields), lambda d: set(d.error_types)):
        sets = [part(d) for d in ds]
        words |= set.union(*sets) - set.intersection(*sets)
    shared = {f for m in vars(config).values() if isinstance(m, type) and issubclass(m, BaseModel)
              and m.__module__ == config.__name__ for f in m.model_fields}
    return words - shared


def test_nothing_outside_the_domains_folder_names_a_domain_split_or_field_by_string():
    """The twin of the import ban: a string such as "val_new", "num_numbers" or "sudoku" outside `domains/`
    (docstrings aside) is a domain leaking into shared code; it belongs to the domain object."""
    words, leaks = _domain_words(), []
    assert {"countdown", "sudoku", "val_new", "val", "num_numbers", "nums", "givens", "computational"} <= words
    for top in ("sbt_core", "tasks", "flows", "deployments"):
        for path in (ROOT / top).rglob("*.py"):
            if (ROOT / "sbt_core" / "domains") in path.parents:
                continue
            tree = ast.parse(path.read_text())
            docs = {id(n.body[0].value) for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                    and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
            leaks += [f"{path.relative_to(ROOT)}:{n.lineno}: {n.value!r}" for n in ast.walk(tree)
                      if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
                      and n.value in words]
    assert leaks == []


def test_every_domain_has_the_protocols_parts():
    for name, d in DOMAINS.items():
        assert d.name == name and d.GenerateConfig().domain == name
        assert d.categories[0] == "correct" and len(d.error_types) == 3 and d.eval_splits
        for attr in ("generate", "prompt", "verify", "claims_goal", "answer_key", "final", "optimal",
                     "backtrack_example", "trace", "data_stats", "extra_metrics"):
            assert callable(getattr(d, attr)), (name, attr)


@pytest.mark.parametrize("numbers", NUMBERS)
@pytest.mark.parametrize("vocabulary", sorted(VOCABULARIES))
def test_each_vocabulary_tokenises_its_texts_without_unknowns_and_decodes_them_back(vocabulary, numbers):
    texts = {
        "countdown": COUNTDOWN.prompt({"nums": [90, 11, 37, 95], "target": 55}) + "90+95=185\n11*185=2035\n"
                     "2035/37=55\nGoal Reached!",
        "countdown-trace": COUNTDOWN.prompt({"nums": [3, 8, 2], "target": 24}) + cd_trace.dfs([3, 8, 2], 24, "sum")
                           + "\n" + cd_trace.direct_released([4, 8, 16, 2], 1024) + "\n" + cd_trace.dfs([2, 3, 28], 10, fmt="sbt"),
        "sudoku": SUDOKU.prompt({"puzzle": "0" * 81}) + "(9,9)=9\nguess (1,2) [3 4]=3\nnocand (4,4)\ninvalid\n"
                  "revert (1,2)\n<backtrack>",
    }
    tok = build_tokenizer(vocabulary, numbers)
    ids = tok(texts[vocabulary], add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == texts[vocabulary]
    words = tok.convert_ids_to_tokens(ids)
    numerals = [w for w in words if w.isdigit()]
    if numbers == "chunks":  # Llama-3's digit chunks: up to three, left to right
        assert max(map(len, numerals)) == 3
    else:
        assert max(map(len, numerals)) == 1


def test_the_countdown_vocabulary_keeps_its_token_ids():
    """Models trained before the seam keep loading with the same ids (the tiny preset's metrics stay identical)."""
    vocab = build_tokenizer("countdown").get_vocab()
    assert len(vocab) == 30 and vocab["<backtrack>"] == 4 and vocab["###Question:"] == 5 and vocab["0"] == 10
    assert vocab["\n"] == 29


# --- Sudoku generation -------------------------------------------------------------------------

def _count(cells: list[int], size: int, limit: int = 2) -> int:
    """An independent plain backtracking count of solutions (not the generator's compiled solver)."""
    _, peers = solver.geometry(size)
    options = {i: [v for v in range(1, size + 1) if all(cells[p] != v for p in peers[i])]
               for i, x in enumerate(cells) if not x}
    if not options:
        return 1
    i = min(options, key=lambda k: len(options[k]))
    found = 0
    for v in options[i]:
        cells[i] = v
        found += _count(cells, size, limit - found)
        cells[i] = 0
        if found >= limit:
            break
    return found


def _valid_solution(solution: str, size: int) -> bool:
    units, _ = solver.geometry(size)
    return all(sorted(solution[i] for i in u) == [str(v) for v in range(1, size + 1)] for u in units)


@pytest.mark.parametrize("size, n", [(4, 40), (6, 30), pytest.param(9, 6, marks=pytest.mark.integration)])
def test_generated_puzzles_have_exactly_one_solution_and_keep_it(size, n, tmp_path):
    uris = SUDOKU.generate(SudokuConfig(size=size, num_train=n, num_val=4, workers=1), str(tmp_path))
    train_rows = io.read_parquet(uris["train"]).to_pylist()
    val_rows = io.read_parquet(uris["val"]).to_pylist()
    assert len(train_rows) == n and len(val_rows) == 4
    assert not {r["puzzle"] for r in val_rows} & {r["puzzle"] for r in train_rows}
    for r in train_rows + val_rows:
        p, s = r["puzzle"], r["solution"]
        assert len(p) == len(s) == size * size and set(p) <= set("0123456789") and _valid_solution(s, size)
        assert all(a in ("0", b) for a, b in zip(p, s)) and r["givens"] == sum(ch != "0" for ch in p)
        assert _count([int(ch) for ch in p], size) == 1
        # Minimal (the default): every given is needed.
        for i in (i for i, ch in enumerate(p) if ch != "0"):
            assert _count([0 if j == i else int(ch) for j, ch in enumerate(p)], size) == 2


def test_givens_set_the_difficulty_and_output_is_the_same_for_any_worker_count(tmp_path):
    cfg = dict(size=9, num_train=40, num_val=4, chunk_size=16, givens=40)
    a = SUDOKU.generate(SudokuConfig(workers=1, **cfg), str(tmp_path / "a"))
    b = SUDOKU.generate(SudokuConfig(workers=2, **cfg), str(tmp_path / "b"))
    for split in ("train", "val"):
        assert io.content_hash(a[split]) == io.content_hash(b[split])
    assert set(io.read_parquet(a["train"])["givens"].to_pylist()) == {40}
    other = SUDOKU.generate(SudokuConfig(workers=1, **{**cfg, "seed": 1}), str(tmp_path / "c"))
    assert io.content_hash(other["train"]) != io.content_hash(a["train"])


def test_the_compiled_counter_agrees_with_the_plain_one():
    rng = np.random.default_rng(0)
    for seed in range(20):
        puzzle, _ = grid.make(seed, 6, None)
        cells = [int(v) for v in puzzle]
        for i in rng.choice(np.flatnonzero(puzzle), size=2, replace=False):
            cells[i] = 0  # now usually ambiguous
        assert grid.count(cells, 6, 5) == _count(list(cells), 6, 5)
    assert grid.count([0] * 16, 4, 1000) == 288  # the number of 4x4 Sudoku grids


# --- Sudoku solver, trace, verifier ------------------------------------------------------------

def _puzzles(size: int, n: int) -> list[dict]:
    out = []
    for seed in range(n):
        p, s = grid.make(seed, size, None)
        out.append({"puzzle": grid.to_str(p), "solution": grid.to_str(s)})
    return out


def test_a_trace_with_guesses_and_reverts_replays_to_the_solution():
    with_guess = 0
    for problem in _puzzles(9, 40):
        trace = SUDOKU.trace(problem, "dfs", None)
        direct = SUDOKU.trace(problem, "direct", None)
        assert SUDOKU.verify(problem, trace).correct and SUDOKU.verify(problem, direct).correct
        assert SUDOKU.verify(problem, trace, strict=False).correct
        lines = trace.split("\n")
        with_guess += any(x.startswith("guess") for x in lines)
        # The direct solution is the trace without abandoned branches: one placement per blank.
        assert direct.count("\n") == problem["puzzle"].count("0")
        assert [x for x in direct.split("\n") if x != GOAL] == solver.direct_lines(lines)
        if any(x.startswith("revert") for x in lines):
            assert len(lines) > len(direct.split("\n"))
    assert with_guess >= 10  # minimal 9x9 puzzles often need a guess


def test_the_solver_writes_guesses_contradictions_and_reverts_in_order():
    # A puzzle the singles cannot finish: the trace must guess, and a wrong guess must be reverted.
    problem = next(p for p in _puzzles(9, 60) if "revert" in SUDOKU.trace(p, "dfs", None))
    lines = SUDOKU.trace(problem, "dfs", None).split("\n")
    first_revert = next(i for i, x in enumerate(lines) if x.startswith("revert"))
    cell = lines[first_revert].split(" ", 1)[1]
    guess = max(i for i in range(first_revert) if lines[i].startswith(f"guess {cell}"))
    assert any(x.startswith("nocand") or x == "invalid" for x in lines[guess:first_revert])
    # The next try on that cell lists only the candidates left.
    retry = lines[first_revert + 1]
    tried = re.fullmatch(r"guess \S+ \[([\d ]+)\]=(\d)", lines[guess])
    again = re.fullmatch(rf"guess {re.escape(cell)} \[([\d ]+)\]=(\d)", retry)
    assert again and again.group(1) == tried.group(1).split(" ", 1)[1]


@pytest.mark.parametrize("response, category", [
    ("(1,1)=1\nGoal Reached!", "rule_violation"),  # overwrites a given
    ("(1,2)=2\n(1,3)=2\nGoal Reached!", "rule_violation"),  # 2 twice in row 1
    ("(1,2)=2\nGoal Reached!", "not_reached"),  # grid not full
    ("(1,2)=2", "not_reached"),  # no goal line
    ("(1,2)=2\n<backtrack>", "not_reached"),
    ("(1,2)=7\nGoal Reached!", "format_error"),  # outside a 4x4 grid
    ("revert (1,2)\nGoal Reached!", "format_error"),  # no open guess
    ("hello\nGoal Reached!", "format_error"),
    ("Goal Reached!\n(1,2)=2", "format_error"),
])
def test_the_sudoku_verifier_names_what_is_wrong(response, category):
    problem = {"puzzle": "1000000000000000", "solution": "1234341221434321"}
    v = SUDOKU.verify(problem, response)
    assert not v.correct and v.category == category


def test_paper_mode_counts_cells_and_strict_mode_needs_a_clean_replay():
    problem = _puzzles(9, 1)[0]
    lines = SUDOKU.trace(problem, "direct", None).split("\n")
    messy = "\n".join(["noise", *lines[:-1], GOAL])
    assert SUDOKU.verify(problem, messy, strict=False).correct
    assert SUDOKU.verify(problem, messy).category == "format_error"
    one_wrong = [re.sub(r"=(\d)$", lambda m: f"={int(m.group(1)) % 9 + 1}", lines[0]), *lines[1:]]
    assert not SUDOKU.verify(problem, "\n".join(one_wrong), strict=False).correct  # 80/81 < 0.99
    blanks = problem["puzzle"].count("0")
    assert SUDOKU.extra_metrics(problem, "\n".join(one_wrong))["cell_accuracy"] == pytest.approx(1 - 1 / blanks)


def test_sudoku_backtrack_rows_put_the_wrong_placement_where_the_loss_masks_it():
    problem = _puzzles(6, 1)[0]
    size = 6
    _, peers = solver.geometry(size)
    rng = np.random.default_rng(0)
    direct = SUDOKU.optimal(problem).split("\n")[:-1]
    seen = set()
    for kind in SUDOKU.error_types * 5:
        ex = SUDOKU.backtrack_example(problem, kind, rng)
        lines = ex.response.split("\n")
        assert lines[-1] == BACKTRACK and lines[:-2] == direct[: ex.prefix_len]
        m = solver.PLACE_RE.fullmatch(lines[-2])
        i, v = (int(m.group(1)) - 1) * size + int(m.group(2)) - 1, int(m.group(3))
        grid_now = [int(ch) for ch in problem["puzzle"]]
        for x in lines[:-2]:
            p = solver.PLACE_RE.fullmatch(x)
            grid_now[(int(p.group(1)) - 1) * size + int(p.group(2)) - 1] = int(p.group(3))
        if ex.error_type == "exploration":
            assert problem["puzzle"][i] == "0" and v != int(problem["solution"][i])
            assert all(grid_now[p] != v for p in peers[i])
        elif ex.error_type == "conflict":
            assert any(grid_now[p] == v for p in peers[i])
        else:
            assert problem["puzzle"][i] != "0" and v != int(problem["puzzle"][i])
        seen.add(ex.error_type)
        # Masking: the prompt and the wrong line are not supervised; the prefix and <backtrack> are.
        tok = build_tokenizer("sudoku")
        enc = train.encode_example(tok, SUDOKU.prompt(problem), ex.response, 512)
        supervised = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != train.IGNORE])
        assert supervised == "".join(f"{x}\n" for x in lines[:-2]) + BACKTRACK + tok.eos_token
    assert seen == set(SUDOKU.error_types)


# --- Countdown traces --------------------------------------------------------------------------

# Expected texts written out by hand from the released generator's rules (arXiv 2504.07052's countdown_dfs.py,
# countdown_dfs_hint.py, countdown.py): children per pair in list order `a+b, a*b`, then larger-smaller and exact
# larger/smaller; a stable sort by heuristic; the parent restated after every child but the last; no closing line.

RELEASED_DFS_SUM = """Current State: 24:[4, 8, 2], Operations: []
Exploring Operation: 8*2=16, Resulting Numbers: [4, 16]
Generated Node #0,0: 24:[4, 16] Operation: 8*2=16
Moving to Node #0,0
Current State: 24:[4, 16], Operations: ['8*2=16']
Exploring Operation: 4+16=20, Resulting Numbers: [20]
20,24 unequal: No Solution
Moving to Node #0,0
Current State: 24:[4, 16], Operations: ['8*2=16']
Exploring Operation: 16-4=12, Resulting Numbers: [12]
12,24 unequal: No Solution
Moving to Node #0,0
Current State: 24:[4, 16], Operations: ['8*2=16']
Exploring Operation: 16/4=4, Resulting Numbers: [4]
4,24 unequal: No Solution
Moving to Node #0
Current State: 24:[4, 8, 2], Operations: []
Exploring Operation: 4*8=32, Resulting Numbers: [2, 32]
Generated Node #0,1: 24:[2, 32] Operation: 4*8=32
Moving to Node #0,1
Current State: 24:[2, 32], Operations: ['4*8=32']
Exploring Operation: 32-2=30, Resulting Numbers: [30]
30,24 unequal: No Solution
Moving to Node #0,1
Current State: 24:[2, 32], Operations: ['4*8=32']
Exploring Operation: 32/2=16, Resulting Numbers: [16]
16,24 unequal: No Solution
Moving to Node #0,1
Current State: 24:[2, 32], Operations: ['4*8=32']
Exploring Operation: 2+32=34, Resulting Numbers: [34]
34,24 unequal: No Solution
Moving to Node #0
Current State: 24:[4, 8, 2], Operations: []
Exploring Operation: 4*2=8, Resulting Numbers: [8, 8]
Generated Node #0,2: 24:[8, 8] Operation: 4*2=8
Moving to Node #0,2
Current State: 24:[8, 8], Operations: ['4*2=8']
Exploring Operation: 8+8=16, Resulting Numbers: [16]
16,24 unequal: No Solution
Moving to Node #0,2
Current State: 24:[8, 8], Operations: ['4*2=8']
Exploring Operation: 8/8=1, Resulting Numbers: [1]
1,24 unequal: No Solution
Moving to Node #0,2
Current State: 24:[8, 8], Operations: ['4*2=8']
Exploring Operation: 8-8=0, Resulting Numbers: [0]
0,24 unequal: No Solution
Moving to Node #0
Current State: 24:[4, 8, 2], Operations: []
Exploring Operation: 4+8=12, Resulting Numbers: [2, 12]
Generated Node #0,3: 24:[2, 12] Operation: 4+8=12
Moving to Node #0,3
Current State: 24:[2, 12], Operations: ['4+8=12']
Exploring Operation: 2*12=24, Resulting Numbers: [24]
24,24 equal: Goal Reached"""

RELEASED_DFS_FAILED = """Current State: 10:[2, 3, 28], Operations: []
Exploring Operation: 28/2=14, Resulting Numbers: [3, 14]
Generated Node #0,0: 10:[3, 14] Operation: 28/2=14
Moving to Node #0,0
Current State: 10:[3, 14], Operations: ['28/2=14']
Exploring Operation: 14-3=11, Resulting Numbers: [11]
11,10 unequal: No Solution
Moving to Node #0,0
Current State: 10:[3, 14], Operations: ['28/2=14']
Exploring Operation: 3+14=17, Resulting Numbers: [17]
17,10 unequal: No Solution"""

RELEASED_THINK = """Current State: 10:[1, 1, 9], Operations: []
Exploring Operation: 1+1=2, Resulting Numbers: [9, 2]
[9, 2] No Solution
Moving to Node #0
Current State: 10:[1, 1, 9], Operations: []
Exploring Operation: 1+9=10, Resulting Numbers: [1, 10]
Generated Node #0,1: 10:[1, 10] Operation: 1+9=10
Moving to Node #0,1
Current State: 10:[1, 10], Operations: ['1+9=10']
Exploring Operation: 1*10=10, Resulting Numbers: [10]
10,10 equal: Goal Reached"""

RELEASED_DIRECT = """Current State: 24:[4, 4, 8, 2], Operations: []
Exploring Operation: 4+4=8, Resulting Numbers: [8, 2, 8]
Generated Node #2: [8, 2, 8] from Operation: 4+4=8
Current State: 24:[8, 2, 8], Operations: ['4+4=8']
Exploring Operation: 8*2=16, Resulting Numbers: [8, 16]
Generated Node #3: [8, 16] from Operation: 8*2=16
Current State: 24:[8, 16], Operations: ['4+4=8', '8*2=16']
Exploring Operation: 8+16=24, Resulting Numbers: [24]
24,24 equal: Goal Reached"""


def test_released_dfs_text_with_a_tie_decided_by_generation_order():
    # [2, 12] (4+8) and [4, 10] (8+2) both score 17: the pair generated first is explored first; 8*8 is pruned.
    assert cd_trace.dfs([4, 8, 2], 24, "sum") == RELEASED_DFS_SUM
    assert cd_trace.final_steps(RELEASED_DFS_SUM) == ["4*8=32", "4+8=12", "2*12=24"][1:]
    assert COUNTDOWN.verify({"nums": [4, 8, 2], "target": 24}, RELEASED_DFS_SUM).correct


def test_released_dfs_prunes_and_a_failed_search_ends_with_no_closing_line():
    # 2+28=30 -> [3, 30] scores 13.5 > 10 and is pruned: the search misses (2+28)/3 = 10.
    t = cd_trace.dfs([2, 3, 28], 10, "sum")
    assert t == RELEASED_DFS_FAILED and cd_trace.first_solution([2, 3, 28], 10) == ["2+28=30", "30/3=10"]
    assert COUNTDOWN.verify({"nums": [2, 3, 28], "target": 10}, t).category == "not_reached"
    assert cd_trace.dfs([1, 1, 22], 11, "mult") == "Current State: 11:[1, 1, 22], Operations: []"  # all pruned


def test_released_mult_heuristic_sums_distances_to_factors_from_2():
    assert cd_trace.heuristic([3, 14], 10, "mult") == 1 + 4  # factors 2, 5, 10
    assert cd_trace.heuristic([3, 14], 10, "mult", "sbt") == (1 + 4) / 2  # ours: the mean, factors from 1
    assert cd_trace.heuristic([1], 10, "mult") == 1 and cd_trace.heuristic([1], 10, "mult", "sbt") == 0


def test_released_think_names_a_hopeless_pair_and_counts_it_in_the_node_ids():
    assert cd_trace.dfs([1, 1, 9], 10, "mult", think=True) == RELEASED_THINK
    assert cd_trace.dfs([3, 8, 2], 23, "mult", think=True) == (
        "Current State: 23:[3, 8, 2], Operations: []\nExploring Operation: 3*8=24, Resulting Numbers: [2, 24]\n"
        "[2, 24] No Solution")


def test_released_direct_is_the_first_dfs_solution_with_flat_ids_and_operands_removed_by_value():
    assert cd_trace.direct_released([4, 4, 8, 2], 24) == RELEASED_DIRECT
    assert COUNTDOWN.verify({"nums": [4, 4, 8, 2], "target": 24}, RELEASED_DIRECT).correct
    assert cd_trace.final_steps(RELEASED_DIRECT) == ["4+4=8", "8*2=16", "8+16=24"]
    with pytest.raises(ValueError, match="cannot make"):
        cd_trace.direct_released([1, 1], 50)


def test_a_trace_continued_after_a_state_prompt_verifies_from_its_first_explored_operation():
    problem = {"nums": [4, 8, 2], "target": 24}
    prompt = COUNTDOWN.prompt(problem, "state")
    assert RELEASED_DFS_SUM.startswith(prompt) and prompt == "Current State: 24:[4, 8, 2], Operations: []\n"
    rest = RELEASED_DFS_SUM[len(prompt):]
    assert COUNTDOWN.verify(problem, rest).correct and COUNTDOWN.answer_key(rest) == ("2*12=24", "4+8=12")
    with pytest.raises(ValueError, match="not 'header'"):
        COUNTDOWN.prompt(problem, "header")


def test_sbt_format_dfs_writes_our_order_and_closes_a_failed_search():
    t = cd_trace.dfs([4, 8, 2], 24, "sum", fmt="sbt")
    assert "Generated Node #0,0: 24:" in t and t.endswith("24,24 equal: Goal Reached")
    assert cd_trace.final_steps(t) == ["8+4=12", "12*2=24"] and COUNTDOWN.verify({"nums": [4, 8, 2], "target": 24}, t).correct
    lines = cd_trace.dfs([5, 7, 3], 36, "sum", fmt="sbt").split("\n")
    back = [i for i, x in enumerate(lines) if x == "Moving to Node #0"]
    assert back and all(lines[i + 1] == "Current State: 36:[5, 7, 3], Operations: []" for i in back)
    # Ours restates a node after a failed subtree, never after a leaf under it (the released text does).
    assert "No Solution\nMoving to Node #0,0\n" not in "\n".join(lines)
    assert "No Solution\nMoving to Node #0,0\n" in cd_trace.dfs([5, 7, 3], 36, "sum")
    assert cd_trace.dfs([2, 3, 28], 10, "sum", fmt="sbt").endswith(cd_trace.FAILED)


def test_pruned_dfs_can_fail_and_a_failed_trace_is_not_reached(data_dir):
    problems = io.read_parquet(str(data_dir / "train.parquet")).slice(0, 200).to_pylist()
    for fmt in cd_trace.FORMATS:
        traces = [(p, cd_trace.dfs(p["nums"], p["target"], "mult", fmt=fmt)) for p in problems]
        failed = [(p, t) for p, t in traces if not COUNTDOWN.claims_goal(t)]
        assert 0 < len(failed) < len(problems)  # every problem is solvable; pruning loses some
        for p, t in failed[:20]:
            assert COUNTDOWN.verify(p, t).category == "not_reached"
            assert t.endswith(cd_trace.FAILED) == (fmt == "sbt")


def test_bfs_keeps_beam_width_nodes_per_level():
    rng = np.random.default_rng(0)
    t = cd_trace.bfs([4, 9, 5, 7], 1000, "sum", beam=2, rng=rng)  # unreachable: every level is written
    moves = [x for x in t.split("\n") if x.startswith("Moving to Node")]
    assert t.endswith(cd_trace.FAILED) and len(moves) == 4  # 2 nodes at depth 1, 2 at depth 2


def test_sbt_think_traces_skip_pairs_that_cannot_make_the_target():
    t = cd_trace.dfs([3, 8, 2], 23, "mult", think=True, fmt="sbt")  # unreachable: every pair is hopeless
    assert "[2, 24] No Solution" in t and t.endswith(cd_trace.FAILED)
    assert "unequal: No Solution" not in t and "Moving to Node #0," not in t  # no hopeless pair is explored
    found = cd_trace.dfs([4, 8, 2], 24, "mult", think=True, fmt="sbt")
    assert COUNTDOWN.verify({"nums": [4, 8, 2], "target": 24}, found).correct
    assert found.count("Moving to Node #0,") == 1  # straight to the pair that makes the target


def test_direct_traces_verify_for_every_generated_problem(data_dir):
    problems = io.read_parquet(str(data_dir / "train.parquet")).slice(0, 200).to_pylist()
    for fmt in cd_trace.FORMATS:
        for p in problems:
            t = COUNTDOWN.trace(p, "direct", None, fmt)
            assert COUNTDOWN.verify(p, t).correct and t.count("Exploring Operation") == len(p["nums"]) - 1


def test_the_paper_checker_accepts_a_trace_that_leaves_a_number_unused():
    problem = {"nums": [3, 8, 2], "target": 24}
    t = ("Current State: 24:[3, 8, 2], Operations: []\nExploring Operation: 8*3=24, Resulting Numbers: [2, 24]\n"
         "24,24 equal: Goal Reached")
    assert COUNTDOWN.verify(problem, t, strict=False).correct
    assert COUNTDOWN.verify(problem, t).category == "rule_violation"


def test_a_trace_claiming_a_path_through_a_node_it_never_generated_fails():
    t = "Current State: 24:[3, 8, 2], Operations: []\nMoving to Node #0,3\n24,24 equal: Goal Reached"
    assert not COUNTDOWN.verify({"nums": [3, 8, 2], "target": 24}, t).correct


# --- recipes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", sorted(build_data.RECIPES))
def test_every_countdown_recipe_builds_rows_the_verifier_reads(recipe, data_dir, tmp_path):
    src = io.join(str(data_dir), "train.parquet")
    problems = io.read_parquet(src).slice(0, 60)
    io.write_parquet(problems, str(tmp_path / "train.parquet"))
    out = build_data.run(BuildDataConfig(recipe=recipe), str(tmp_path / "train.parquet"), str(tmp_path / "out"))
    table = io.read_parquet(out["sft"])
    rows = table.to_pylist()
    assert {"prompt", "response", "nums", "target", "kind"} <= set(table.column_names)
    finals = [r for r in rows if r["kind"] != "backtrack"]
    assert len(finals) == 60
    ok = sum(COUNTDOWN.verify(r, r["response"]).correct for r in finals)
    if recipe in ("optimal", "self_backtrack", "direct"):
        assert ok == 60
    else:
        assert 0 < ok <= 60  # pruned DFS (and narrow BFS) fail on some problems; failed traces are kept
    lengths = io.read_json(str(tmp_path / "out" / "manifest.json"))["stats"]["token_lengths"]
    assert lengths["all"]["rows"] == len(rows) and lengths["all"]["max"] >= lengths["all"]["median"] > 0
    tok = build_tokenizer(build_data.RECIPES[recipe].vocabulary(COUNTDOWN))
    assert all(tok.unk_token_id not in tok(r["prompt"] + r["response"])["input_ids"] for r in rows[:20])


def test_recipes_are_deterministic_and_a_domain_refuses_what_it_cannot_write():
    problems = pa.table({"id": [0, 1], "puzzle": ["1000000000000000", "0200000000000000"],
                         "solution": ["1234341221434321", "1234341221434321"]})
    with pytest.raises(ValueError, match="no 'think' traces"):
        build_data.build(problems, BuildDataConfig(recipe="think_trace"), SUDOKU)
    with pytest.raises(ValueError, match="unknown recipe"):
        build_data.build(problems, BuildDataConfig(recipe="bfs"), SUDOKU)


def test_sudoku_self_backtrack_data_is_the_same_bytes_for_the_same_seed(tmp_path):
    uris = SUDOKU.generate(SudokuConfig(size=6, num_train=30, num_val=2, workers=1), str(tmp_path / "d"))
    a = build_data.run(BuildDataConfig(recipe="self_backtrack", seed=3), uris["train"], str(tmp_path / "a"), "sudoku")
    b = build_data.run(BuildDataConfig(recipe="self_backtrack", seed=3), uris["train"], str(tmp_path / "b"), "sudoku")
    assert io.content_hash(a["sft"]) == io.content_hash(b["sft"])
    rows = io.read_parquet(a["sft"]).to_pylist()
    assert sum(r["kind"] == "backtrack" for r in rows) == 30
    assert all(SUDOKU.verify(r, r["response"]).correct == (r["kind"] == "optimal") for r in rows)


def test_majority_votes_on_the_filled_grid_in_sudoku():
    a = "(1,2)=2\n(1,3)=3\nGoal Reached!"
    b = "(1,3)=3\n(1,2)=2\nGoal Reached!"
    c = "guess (1,3) [3 4]=4\nnocand (2,2)\nrevert (1,3)\n(1,3)=3\n(1,2)=2\nGoal Reached!"
    assert SUDOKU.answer_key(a) == SUDOKU.answer_key(b) == SUDOKU.answer_key(c)
    assert SUDOKU.answer_key("(1,2)=2\n(1,3)=4\nGoal Reached!") != SUDOKU.answer_key(a)
    assert SUDOKU.answer_key("(1,2)=2") is None
