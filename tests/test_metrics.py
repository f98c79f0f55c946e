"""pass@k, decode FLOPs and token budgets, against brute force and hand computation."""

from __future__ import annotations

from itertools import combinations

import pytest

from sbt_core import metrics
from sbt_core.domains import DOMAINS
from sbt_core.domains.countdown import trace
from sbt_core.models import SIZES, build_tiny, build_tokenizer


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_sample(n):
    for c in range(n + 1):
        right = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(combinations(range(n), k))
            brute = sum(any(right[i] for i in s) for s in subsets) / len(subsets)
            assert metrics.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_stays_finite_for_many_samples_and_refuses_nonsense():
    assert metrics.pass_at_k(10_000, 1, 1) == pytest.approx(1e-4)
    assert 0 < metrics.pass_at_k(10_000, 3, 64) < 1
    for n, c, k in ((4, 5, 1), (4, 1, 5), (4, 1, 0)):
        with pytest.raises(ValueError):
            metrics.pass_at_k(n, c, k)


def test_decode_flops_match_a_hand_computation():
    # h=4, kv=2, ffn=8, 3 layers, L=5, n=2:
    # per layer: (2*16 + 2*4*2 + 3*4*8) * 5 + 4 * 5*6/2 = (32 + 16 + 96) * 5 + 60 = 780
    assert metrics.decode_flops(metrics.Shape(n_layer=3, hidden=4, kv=2, ffn=8), 5, 2) == 3 * 780 * 2


def test_the_17m_shape_is_read_from_its_config_as_the_paper_gives_it():
    model = build_tiny("17m", build_tokenizer())
    shape = metrics.Shape.of(model.config)
    assert shape == metrics.Shape(n_layer=8, hidden=512, kv=128, ffn=1024)  # 4 heads of 128, 1 KV head
    assert SIZES["17m"]["num_key_value_heads"] == 1
    # The paper's matching: 4,096 tokens of one backtracking decode cost about 16 direct samples of 256.
    one_long = metrics.decode_flops(shape, 4096)
    direct = metrics.decode_flops(shape, 256, 16)
    assert 1.0 < one_long / direct < 2.0


def test_a_trace_solved_late_is_not_solved_within_a_smaller_budget():
    tok = build_tokenizer("countdown-trace")
    problem = {"nums": [5, 7, 3], "target": 36}
    text = trace.dfs(problem["nums"], problem["target"], "sum")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    countdown = DOMAINS["countdown"]
    assert countdown.verify(problem, tok.decode(metrics.within_budget(ids, len(ids)))).correct
    assert not countdown.verify(problem, tok.decode(metrics.within_budget(ids, len(ids) - 1))).correct
    assert metrics.within_budget(ids, 10**6) == ids and metrics.within_budget(ids, 0) == []


def test_sample_curves_read_every_n_from_the_same_samples():
    from sbt_core import study

    countdown = DOMAINS["countdown"]
    shape = metrics.Shape(n_layer=1, hidden=2, kv=2, ffn=2)
    problems = [{"nums": [1, 2], "target": 3}, {"nums": [2, 2], "target": 4}]
    ok1, bad1 = "1+2=3\nGoal Reached!", "1*2=3\nGoal Reached!"
    ok2, bad2 = "2+2=4\nGoal Reached!", "2*2=5\nGoal Reached!"
    samples = [[(bad1, -0.1, 4, 0.0), (ok1, -0.5, 4, 0.0), (ok1, -0.9, 4, 0.0), (bad1, -0.2, 4, 0.0)],
               [(bad2, -0.3, 6, 0.0), (bad2, -0.1, 6, 0.0), (ok2, -0.2, 6, 0.0), ("2", -0.05, 2, 0.0)]]
    curves = study.sample_curves(countdown, problems, samples, [1, 2, 4], shape)
    by_n = {name: {p["n"]: p for p in pts} for name, pts in curves.items()}
    # pass@1 from all 4 samples: problem 1 has 2 right of 4, problem 2 has 1 of 4.
    assert by_n["pass_at_n"][1]["accuracy"] == pytest.approx((0.5 + 0.25) / 2)
    assert by_n["pass_at_n"][4]["accuracy"] == 1.0
    # best-of-n by log-prob among the first n: n=2 picks bad1 (-0.1) and bad2 (-0.1); n=4 the same.
    assert by_n["best_of_n"][2]["accuracy"] == 0.0 and by_n["best_of_n"][1]["accuracy"] == 0.0
    # majority@4: problem 1 ties 2:2, the best-scored sample (bad1) wins; problem 2: bad2 twice beats ok2 once.
    assert by_n["majority_at_n"][4]["accuracy"] == 0.0
    # majority@2 on problem 1: bad1 and ok1 once each, bad1 scores higher -> wrong.
    assert by_n["majority_at_n"][2]["accuracy"] == 0.0
    assert by_n["pass_at_n"][2]["tokens_per_problem"] == (8 + 12) / 2
    assert by_n["pass_at_n"][2]["flops_measured"] == pytest.approx(
        (2 * metrics.decode_flops(shape, 4) + 2 * metrics.decode_flops(shape, 6)) / 2)
    with pytest.raises(ValueError, match="n=8 needs at least 8 samples"):
        study.sample_curves(countdown, problems, samples, [8], shape)


def test_budget_curve_reads_one_decode_at_every_budget():
    from sbt_core import study

    tok = build_tokenizer("countdown-trace")
    countdown = DOMAINS["countdown"]
    problems = [{"nums": [5, 7, 3], "target": 36}, {"nums": [3, 8, 2], "target": 22}]
    decodes = [tok(trace.dfs(p["nums"], p["target"], "sum"), add_special_tokens=False)["input_ids"] for p in problems]
    short, long_ = sorted(len(d) for d in decodes)
    shape = metrics.Shape(n_layer=1, hidden=2, kv=2, ffn=2)
    points = study.budget_curve(countdown, problems, decodes, tok.decode, [short, long_, short - 1], shape)
    assert [p["budget"] for p in points] == [short - 1, short, long_]
    assert [p["accuracy"] for p in points] == [0.0, 0.5, 1.0]
    assert points[1]["tokens_per_problem"] == short  # both decodes cut at `short`
    assert points[2]["flops_formula"] == metrics.decode_flops(shape, round((short + long_) / 2))


def test_paired_change_is_the_mean_per_problem_difference_with_its_interval():
    mean, low, high = metrics.paired_change([0, 0, 1, 1, 0, 0], [1, 0, 1, 1, 1, 0])
    assert mean == pytest.approx(2 / 6) and low < mean < high
    assert metrics.paired_change([0.5, 1.0], [0.5, 1.0]) == (0.0, 0.0, 0.0)  # the same on every problem: no spread
    with pytest.raises(ValueError):
        metrics.paired_change([1.0], [1.0, 0.0])
