"""Verifier-free selectors over a search's candidates, and the learned value read from `<backtrack>`."""

import math

import pyarrow as pa
import pytest

from sbt_core import selectors
from sbt_core.domains import DOMAINS
from sbt_core.evaluate import summarize
from sbt_core.search.common import LM, Result
from sbt_core.search.run import results_table

COUNTDOWN = DOMAINS["countdown"]
RIGHT = "3+5=8\nGoal Reached!"
WRONG = "3*5=8\nGoal Reached!"  # a computation error that claims the goal


def cand(response, score, value=None):
    return {"response": response, "score": score, "value": value}


def test_each_selector_follows_its_rule():
    # One confident wrong path against a right path found three times with lower scores.
    pool = [cand(WRONG, -0.2, -3.0), cand(RIGHT, -0.5, -0.1), cand(RIGHT, -0.5, -0.1), cand(RIGHT, -0.6, -0.2)]
    picked = {name: pool[selectors.choose(name, pool, COUNTDOWN)]["response"] for name in selectors.SELECTORS}
    assert picked["logprob"] == WRONG  # the highest mean log-prob
    assert picked["majority"] == RIGHT  # three votes against one
    assert picked["likelihood_vote"] == RIGHT  # 3 x e^-0.5 > e^-0.2
    assert picked["value"] == RIGHT  # the model would have backtracked after the wrong step
    # The released rule sums the (negative) scores of identical paths: the path found 3 times sums to -1.6,
    # below the single wrong one's -0.2.
    assert picked["released_sum"] == WRONG
    assert selectors.choose("logprob", [], COUNTDOWN) is None
    with pytest.raises(ValueError, match="unknown selector 'nope'"):
        selectors.choose("nope", pool, COUNTDOWN)


def test_votes_count_answers_not_strings_and_fall_back_without_any():
    # Two orders of the same steps are one answer (Countdown's key is the multiset of steps): they outvote a
    # more likely single one, and the vote returns the likelier of the two.
    a, b = "1+2=3\n3+4=7\n3*7=21\nGoal Reached!", "3+4=7\n1+2=3\n3*7=21\nGoal Reached!"
    pool = [cand(WRONG, -0.1), cand(a, -0.9), cand(b, -0.8)]
    assert COUNTDOWN.answer_key(a) == COUNTDOWN.answer_key(b) != COUNTDOWN.answer_key(WRONG)
    assert selectors.choose("majority", pool, COUNTDOWN) == 2
    unreadable = [cand("3+", -0.3), cand("nonsense", -0.1)]
    assert selectors.choose("majority", unreadable, COUNTDOWN) == 1  # no answer to vote on: log-prob
    # Without recorded values (the reference decoder, beam), `value` ranks by log-prob.
    assert selectors.choose("value", [cand(WRONG, -0.1), cand(RIGHT, -0.3)], COUNTDOWN) == 0


def test_summary_reports_every_selector_the_ceiling_and_the_gap():
    problems = pa.table({"id": [0, 1], "nums": [[3, 5], [3, 5]], "target": [8, 8]})
    pool = [cand(WRONG, -0.2, -3.0), cand(RIGHT, -0.5, -0.1), cand(RIGHT, -0.5, -0.1)]
    results = [Result(WRONG, pool, rounds=1), Result(RIGHT, [cand(RIGHT, -0.1, -0.1)] * 2, rounds=1)]
    s = summarize(results_table(problems, results, 1.0, COUNTDOWN), COUNTDOWN)
    assert s["accuracy_strict"] == 0.5 and s["any_candidate_correct_strict"] == 1.0
    assert s["selection_gap"] == pytest.approx(0.5)
    assert s["selectors"]["logprob"] == s["accuracy_strict"]  # the default reproduces the search's own choice
    assert s["selectors"] == {"logprob": 0.5, "released_sum": 0.5, "majority": 1.0, "likelihood_vote": 1.0,
                              "value": 1.0}
    # One candidate per problem (greedy): no selector to compare.
    single = [Result(RIGHT, [cand(RIGHT, -0.1)], rounds=1), Result(WRONG, [cand(WRONG, -0.1)], rounds=1)]
    assert "selectors" not in summarize(results_table(problems, single, 1.0, COUNTDOWN), COUNTDOWN)


class _Newlines:
    newline_ids = {10}
    value = LM.value


def test_value_sums_the_no_backtrack_probability_over_step_boundaries():
    # tokens: a b \n c \n  -> boundaries at 0, 3 (after the first newline) and 5 would be past the end.
    tokens = [1, 2, 10, 3, 10]
    p = [0.01, 0.5, 0.5, 0.2, 0.5]
    value = _Newlines().value(tokens, [math.log(x) for x in p])
    assert value == pytest.approx(math.log(0.99) + math.log(0.8))
    assert _Newlines().value([], []) == 0.0
