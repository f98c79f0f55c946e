"""Solver, generator, backtracking data and dataset import."""

import json

import numpy as np
import pyarrow as pa
import pytest

from sbt_core import build_data, io
from sbt_core.config import BuildDataConfig
from sbt_core.domains import DOMAINS
from sbt_core.domains.countdown.config import GenerateConfig
from sbt_core.domains.countdown import generate, importer, verify
from sbt_core.domains.countdown.format import BACKTRACK, parse_step, solution_steps
from sbt_core.domains.countdown.solver import apply_step, decode_program, pick_programs, reachable, solve_batch

COUNTDOWN = DOMAINS["countdown"]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_vectorised_solver_agrees_with_recursive_search(count):
    rng = np.random.default_rng(count)
    nums = rng.integers(1, 30, size=(300, count))
    targets = rng.integers(10, 101, size=300)
    programs = pick_programs(solve_batch(nums, targets), rng)
    for row, t, p in zip(nums.tolist(), targets.tolist(), programs.tolist()):
        assert (p >= 0) == reachable(row, t)
        if p >= 0:  # the decoded path is a strict solution
            steps = decode_program(row, p)
            text = "\n".join(map(str, steps)) + "\nGoal Reached!"
            assert verify(row, t, text).correct, text


def test_splits_sizes_targets_and_disjointness(data_dir):
    tables = {s: io.read_parquet(str(data_dir / f"{s}.parquet")) for s in generate.SPLITS}
    assert [len(tables[s]) for s in generate.SPLITS] == [3000, 40, 40]
    seen, held = generate.split_targets(GenerateConfig(seed=1))
    assert len(held) == 9 and not set(seen) & set(held)
    assert set(tables["train"]["target"].to_pylist()) <= set(seen)
    assert set(tables["val_seen"]["target"].to_pylist()) <= set(seen)
    assert set(tables["val_new"]["target"].to_pylist()) <= set(held)
    assert not generate.problem_keys(tables["val_seen"]) & generate.problem_keys(tables["train"])
    for s, t in tables.items():
        assert {"nums", "target", "solution"} <= set(t.column_names)
        for nums, target, sol in zip(t["nums"].to_pylist(), t["target"].to_pylist(), t["solution"].to_pylist()):
            assert len(nums) == 4 and all(1 <= n <= 99 for n in nums) and 10 <= target <= 100
            assert verify(nums, target, sol).correct, (nums, target, sol)
    manifest = io.read_json(str(data_dir / "manifest.json"))
    assert manifest["stage"] == "generate" and manifest["outputs"]["train"]["rows"] == 3000
    assert manifest["config_hash"] and manifest["code_version"].startswith("0.1.0+")


def test_generation_is_byte_identical_for_a_seed_whatever_the_workers(tmp_path):
    cfg = dict(num_train=700, num_val_seen=20, num_val_new=20, seed=7, chunk_size=256)
    a = generate.run(GenerateConfig(workers=1, **cfg), str(tmp_path / "a"))
    b = generate.run(GenerateConfig(workers=2, **cfg), str(tmp_path / "b"))
    c = generate.run(GenerateConfig(workers=1, **{**cfg, "seed": 8}), str(tmp_path / "c"))
    for split in generate.SPLITS:
        assert io.content_hash(a[split]) == io.content_hash(b[split])
    assert io.content_hash(a["train"]) != io.content_hash(c["train"])


def test_other_number_counts_and_ranges(tmp_path):
    cfg = GenerateConfig(num_numbers=3, number_max=20, target_min=1, target_max=30, num_train=100,
                         num_val_seen=10, num_val_new=10, workers=1)
    t = generate.generate(cfg)["train"]
    for nums, target, sol in zip(t["nums"].to_pylist(), t["target"].to_pylist(), t["solution"].to_pylist()):
        assert len(nums) == 3 and max(nums) <= 20 and verify(nums, target, sol).correct


def test_val_seen_draws_again_until_it_has_the_problems_not_in_train():
    # 3 numbers in [1, 10], targets 10-30: 3,000 train rows leave few fresh problems, so the first draw (10%
    # extra) keeps 12 of 116; the tiny preset's val_seen was 97 rows of 500 that way
    cfg = GenerateConfig(num_numbers=3, number_max=10, target_max=30, held_out_fraction=0.0, num_train=3000,
                         num_val_seen=100, num_val_new=0, workers=1)
    tables = generate.generate(cfg)
    seen, _ = generate.split_targets(cfg)
    first = generate._generate_split(cfg, "val_seen", seen, 116, None, None)
    assert len(generate.problem_keys(first) - generate.problem_keys(tables["train"])) < 100
    val_seen = tables["val_seen"]
    assert len(val_seen) == 100 and val_seen["id"].to_pylist() == list(range(100))
    assert not generate.problem_keys(val_seen) & generate.problem_keys(tables["train"])
    for nums, target, sol in zip(*(val_seen[c].to_pylist() for c in ("nums", "target", "solution"))):
        assert target in seen and verify(nums, target, sol).correct
    assert generate.generate(cfg.model_copy(update={"workers": 2}))["val_seen"].equals(val_seen)  # same bytes


def test_a_val_seen_the_train_split_used_up_is_an_error_not_an_empty_file():
    # 2 numbers in [1, 3] with targets 2-6: a handful of problems, all drawn into train many times over
    cfg = GenerateConfig(num_numbers=2, number_max=3, target_min=2, target_max=6, held_out_fraction=0.2,
                         num_train=200, num_val_seen=5, num_val_new=0, workers=1)
    with pytest.raises(ValueError, match=r"num_val_seen: 5 problems .* 0 found .* lower num_val_seen"):
        generate.generate(cfg)
    assert len(generate.generate(cfg.model_copy(update={"num_val_seen": 0}))["val_seen"]) == 0


def test_backtrack_rows_follow_the_definition(data_dir):
    problems = io.read_parquet(str(data_dir / "train.parquet")).slice(0, 600)
    table = build_data.build(problems, BuildDataConfig(seed=3), COUNTDOWN)
    rows = table.to_pylist()
    assert sum(r["kind"] == "optimal" for r in rows) == 600
    assert sum(r["kind"] == "backtrack" for r in rows) == 600  # D_op:D_back = 1:1
    kinds = [r["error_type"] for r in rows if r["kind"] == "backtrack"]
    share = {k: kinds.count(k) / len(kinds) for k in COUNTDOWN.error_types}
    assert abs(share["exploration"] - 0.2) < 0.06 and abs(share["computational"] - 0.4) < 0.07
    optimal = {r["problem_id"]: solution_steps(r["response"]) for r in rows if r["kind"] == "optimal"}
    for r in rows:
        if r["kind"] != "backtrack":
            continue
        lines = r["response"].split("\n")
        assert lines[-1] == BACKTRACK and len(lines) == r["prefix_len"] + 2
        assert lines[: r["prefix_len"]] == optimal[r["problem_id"]][: r["prefix_len"]]
        assert 0 <= r["prefix_len"] < len(optimal[r["problem_id"]])
        pool = sorted(r["nums"])
        for line in lines[: r["prefix_len"]]:
            pool = apply_step(pool, parse_step(line))
        err = parse_step(lines[-2])
        # The prefix plus the erroneous step, judged by the strict verifier.
        verdict = verify(r["nums"], r["target"], "\n".join(lines[:-1]) + "\nGoal Reached!")
        if r["error_type"] == "exploration":
            assert verdict.category in ("not_reached", "rule_violation")  # legal step, correct arithmetic
            assert not reachable(apply_step(pool, err), r["target"])
        elif r["error_type"] == "computational":
            assert verdict.category == "computation_error"
        else:
            assert verdict.category == "rule_violation"


def test_build_data_is_deterministic_and_ratios_configurable(data_dir):
    problems = io.read_parquet(str(data_dir / "train.parquet")).slice(0, 200)
    a = build_data.build(problems, BuildDataConfig(seed=1), COUNTDOWN)
    assert a.equals(build_data.build(problems, BuildDataConfig(seed=1), COUNTDOWN))
    two = build_data.build(problems, BuildDataConfig(backtrack_per_optimal=2.0, error_type_ratio=(0, 0, 1)), COUNTDOWN)
    assert two["kind"].to_pylist().count("backtrack") == 400
    assert set(two["error_type"].drop_null().to_pylist()) == {"rule_violation"}


RELEASED = [  # the released layout (yangxw/countdown-backtracking): rows as its viewer shows them
    {"nums": [90, 11, 37, 95], "target": 55, "search_path": "90+95=185\n11*185=2035\n2035/37=55\nGoal Reached!",
     "is_find": True, "is_backtrack": False},
    {"nums": [90, 11, 37, 95], "target": 55, "search_path": "90+95=185\n11*185=2035\n84/5=83\n<backtrack>",
     "is_find": False, "is_backtrack": True},
    {"nums": [45, 39, 10, 2], "target": 62, "search_path": "45-39=6\n10*6=60\n2+60=62\nGoal Reached!",
     "is_find": True, "is_backtrack": False},
    {"nums": [45, 39, 10, 2], "target": 62, "search_path": "114-75=39\n<backtrack>",
     "is_find": False, "is_backtrack": True},
]


def write_released(path, rows, columns):
    """The released rows with `columns` only, as Parquet, JSONL, JSON (a list) or CSV."""
    import pyarrow.csv as pcsv

    rows = [{c: r[c] for c in columns} for r in rows]
    if path.suffix == ".parquet":
        io.write_parquet(pa.Table.from_pylist(rows), str(path))
    elif path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        pcsv.write_csv(pa.Table.from_pylist([{**r, "nums": json.dumps(r["nums"])} for r in rows]), str(path))
    return path


@pytest.mark.parametrize("columns", [("nums", "target", "search_path"),
                                     ("nums", "target", "search_path", "is_find", "is_backtrack")])
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json", ".csv"])
def test_import_the_released_layout(tmp_path, columns, suffix):
    src = write_released(tmp_path / f"train{suffix}", RELEASED, columns)
    out = importer.run(str(src), str(tmp_path / "out"))
    sft = io.read_parquet(out["sft"]).to_pylist()
    assert [r["kind"] for r in sft] == ["optimal", "backtrack", "optimal", "backtrack"]
    assert [r["prefix_len"] for r in sft] == [3, 2, 3, 0] and sft[0]["nums"] == [90, 11, 37, 95]
    assert io.read_parquet(out["problems"])["solution"].to_pylist() == [RELEASED[0]["search_path"],
                                                                        RELEASED[2]["search_path"]]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["kind_from"] == ("flags" if "is_find" in columns else "search_path ending")


def test_import_a_folder_and_a_hub_name_from_the_local_cache(tmp_path, monkeypatch):
    """The repository's files in a folder, and the dataset's name resolved offline from the hub cache."""
    folder = tmp_path / "countdown-backtracking"
    (folder / "data").mkdir(parents=True)
    write_released(folder / "data" / "train-00000-of-00001.parquet", RELEASED, ("nums", "target", "search_path"))
    write_released(folder / "data" / "validation-00000-of-00001.parquet", RELEASED[:2], ("nums", "target", "search_path"))
    assert len(io.read_parquet(importer.run(str(folder), str(tmp_path / "a"))["sft"])) == 4
    assert len(io.read_parquet(importer.run(str(folder), str(tmp_path / "b"), split="validation")["sft"])) == 2
    # the hub cache layout huggingface_hub writes: datasets--owner--name/{refs/main, snapshots/<commit>/...}
    cache = tmp_path / "hub"
    repo = cache / "datasets--yangxw--countdown-backtracking"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    import shutil

    shutil.copytree(folder, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    import importlib

    import datasets.config
    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    importlib.reload(datasets.config)
    try:
        out = importer.run("yangxw/countdown-backtracking", str(tmp_path / "c"))
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)
        importlib.reload(datasets.config)
    assert [r["kind"] for r in io.read_parquet(out["sft"]).to_pylist()] == ["optimal", "backtrack"] * 2


@pytest.mark.parametrize(
    "row,message",
    [
        ({"target": 5, "search_path": "Goal Reached!", "is_find": True, "is_backtrack": False}, "row 2: field 'nums'"),
        ({"nums": [1, "2"], "target": 5, "search_path": "Goal Reached!", "is_find": True, "is_backtrack": False}, "row 2: field 'nums'"),
        ({"nums": [1, 2], "target": "5", "search_path": "Goal Reached!", "is_find": True, "is_backtrack": False}, "row 2: field 'target'"),
        ({"nums": [1, 2], "target": 5, "search_path": "1+2=3", "is_find": True, "is_backtrack": False}, "row 2: field 'search_path'"),
        ({"nums": [1, 2], "target": 5, "search_path": "Goal Reached!", "is_find": True, "is_backtrack": True}, "row 2: exactly one"),
    ],
)
def test_import_errors_name_row_and_field(row, message):
    good = {"nums": [1, 2], "target": 3, "search_path": "1+2=3\nGoal Reached!", "is_find": True, "is_backtrack": False}
    with pytest.raises(importer.DatasetFormatError, match=message):
        importer.convert([good, row])


def test_import_errors_for_unreadable_sources(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nums": [1, 2], "target": 3, "search_path": "1+2=3\\nGoal Reached!"}\n{oops')
    with pytest.raises(importer.DatasetFormatError, match="bad.jsonl"):
        importer.run(str(bad), str(tmp_path / "out"))
    with pytest.raises(importer.DatasetFormatError, match="search_path"):
        importer.convert([{"nums": [1, 2], "target": 3, "search_path": "1+2=3"}])  # no flags, no terminator
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(importer.DatasetFormatError, match="not a Parquet, JSON, JSONL or CSV file"):
        importer.load(str(tmp_path / "x.txt"))


def test_computational_errors_at_the_target_bend_the_last_step(data_dir):
    problems = io.read_parquet(str(data_dir / "train.parquet")).slice(0, 300)
    rows = build_data.build(problems, BuildDataConfig(error_type_ratio=(0, 1, 0), computational_at_target=1.0), COUNTDOWN).to_pylist()
    optimal = {r["problem_id"]: solution_steps(r["response"]) for r in rows if r["kind"] == "optimal"}
    back = [r for r in rows if r["kind"] == "backtrack"]
    assert len(back) == 300 and {r["error_type"] for r in back} == {"computational"}
    for r in back:
        lines = r["response"].split("\n")
        assert r["prefix_len"] == len(optimal[r["problem_id"]]) - 1 and lines[:-2] == optimal[r["problem_id"]][:-1]
        err = parse_step(lines[-2])
        assert err.result == r["target"]  # lands on the target ...
        verdict = verify(r["nums"], r["target"], "\n".join(lines[:-1]) + "\nGoal Reached!")
        assert verdict.category == "computation_error"  # ... with wrong arithmetic
    half = build_data.build(problems, BuildDataConfig(error_type_ratio=(0, 1, 0), computational_at_target=0.5), COUNTDOWN)
    last = [r["prefix_len"] == len(optimal[r["problem_id"]]) - 1 and r["response"].split("\n")[-2].endswith(f"={r['target']}")
            for r in half.to_pylist() if r["kind"] == "backtrack"]
    assert 0.4 < sum(last) / len(last) < 0.75  # half bent onto the target, plus chance hits of the plain kind


def test_replay_adds_old_rows_per_distilled_row_without_replacement_in_the_new_rows_schema():
    import pyarrow as pa

    from sbt_core.distill import with_replay

    new = pa.table({"id": pa.array([0, 1], pa.int64()), "response": ["a", "b"], "prefix_len": pa.array([1, 1], pa.int64())})
    old = pa.table({"prefix_len": pa.array(range(10), pa.int32()), "id": pa.array(range(10), pa.int32()),
                    "response": [f"o{i}" for i in range(10)], "kind": ["optimal"] * 10})
    both = with_replay(new, old, 2.0, seed=0)
    assert both.schema == new.schema and both["id"].to_pylist() == [0, 1, 2, 3, 4, 5]
    picked = both["response"].to_pylist()[2:]
    assert len(set(picked)) == 4 and set(picked) <= {f"o{i}" for i in range(10)}
    assert picked == sorted(picked, key=lambda r: int(r[1:]))  # in their order in the old set
    assert with_replay(new, old, 2.0, seed=0).equals(both) and not with_replay(new, old, 2.0, seed=1).equals(both)
    assert len(with_replay(new, old, 100.0, seed=0)) == 12 and with_replay(new, old, 0.0, seed=0).equals(new)


def test_distill_run_keeps_verified_outputs_then_replays_the_old_set_and_records_both(data_dir, tmp_path):
    from sbt_core import distill

    train_uri = str(data_dir / "train.parquet")
    problems = io.read_parquet(train_uri).slice(0, 40)
    old = build_data.build(problems, BuildDataConfig(seed=2), COUNTDOWN)
    old_uri = io.write_parquet(old, str(tmp_path / "old" / "sft.parquet"))
    solved = {r["problem_id"]: r["response"] for r in old.to_pylist() if r["kind"] == "optimal"}
    rows = problems.slice(0, 10).to_pylist()
    search = pa.table({"id": [r["id"] for r in rows], "nums": [r["nums"] for r in rows],
                       "target": [r["target"] for r in rows],
                       "output": [solved[r["id"]] if i % 2 else "1+1=2\n" for i, r in enumerate(rows)],
                       "correct_strict": [bool(i % 2) for i in range(10)]})
    results = io.write_parquet(search, str(tmp_path / "search" / "results.parquet"))
    io.write_manifest(str(tmp_path / "search"), "search", {}, [train_uri], {"results": results})

    out = distill.run(results, str(tmp_path / "ei"), replay_uri=old_uri, replay=1.5, seed=4)
    made = io.read_parquet(out["sft"]).to_pylist()
    manifest = json.loads((tmp_path / "ei" / "manifest.json").read_text())
    assert manifest["stats"] == {"distilled": 5, "replayed": 8} and len(made) == 13
    assert [r["problem_id"] for r in made[:5]] == [rows[i]["id"] for i in (1, 3, 5, 7, 9)]
    assert all(r["kind"] == "optimal" for r in made[:5])
    assert {(r["prompt"], r["response"]) for r in made[5:]} <= {(r["prompt"], r["response"]) for r in old.to_pylist()}
    assert old_uri in [i["uri"] for i in manifest["inputs"]] and manifest["config"]["replay"] == 1.5
    again = distill.run(results, str(tmp_path / "ei2"), replay_uri=old_uri, replay=1.5, seed=4)
    assert io.read_bytes(again["sft"]) == io.read_bytes(out["sft"])
    with pytest.raises(ValueError, match="replay_uri"):
        distill.run(results, str(tmp_path / "ei3"), replay=1.0)
