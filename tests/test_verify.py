"""The verifier: categories, both modes, public checkers' loopholes, and never raising."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sbt_core.domains.countdown import CATEGORIES, verify
from sbt_core.domains.countdown.format import format_prompt, parse_prompt

NUMS, TARGET = [90, 11, 37, 95], 55
GOOD = "90+95=185\n11*185=2035\n2035/37=55\nGoal Reached!"


def cat(response, strict=True, nums=NUMS, target=TARGET):
    return verify(nums, target, response, strict=strict).category


def test_prompt_is_the_papers_exact_text():
    assert format_prompt(NUMS, TARGET) == "###Question: numbers [90, 11, 37, 95]->target 55\n###Response:\n"
    assert parse_prompt(format_prompt(NUMS, TARGET)) == (NUMS, TARGET)


def test_correct_solution_in_both_modes():
    assert verify(NUMS, TARGET, GOOD).correct
    assert verify(NUMS, TARGET, GOOD, strict=False).correct
    assert verify(NUMS, TARGET, GOOD + "\n").correct  # a trailing newline is whitespace


def test_categories_strict():
    assert cat("") == "format_error"
    assert cat("90 + 95 = 185\nGoal Reached!") == "format_error"  # spaces are not the format
    assert cat("90+96=186\nGoal Reached!") == "rule_violation"  # 96 not in the pool
    assert cat("90+95=186\nGoal Reached!") == "computation_error"
    assert cat("11-37=0\nGoal Reached!") == "computation_error"  # negative result
    assert cat("90/0=0\nGoal Reached!", nums=[90, 0, 1, 2]) == "computation_error"
    assert cat("95/11=8\nGoal Reached!") == "computation_error"  # inexact division
    assert cat("90+95=185\n11*185=2035\n2035-37=1998\nGoal Reached!") == "not_reached"
    assert cat("90+95=185\n11*185=2035\n2035/37=55") == "not_reached"  # no claim
    assert cat("90+95=185\n<backtrack>") == "not_reached"
    assert set(CATEGORIES) == {"correct", "format_error", "rule_violation", "computation_error", "not_reached"}


def test_loopholes_are_rejected():
    # The same number used twice (the Stream-of-Search checker's hole).
    assert cat("5*4=20\n5*4=20\nGoal Reached!", nums=[5, 4, 7, 9], target=20) == "rule_violation"
    assert cat("5+5=10\nGoal Reached!", nums=[5, 1], target=10) == "rule_violation"
    # `**` (TinyZero's whitelist lets it through).
    assert cat("2**3=8\nGoal Reached!", nums=[2, 3], target=8) == "format_error"
    # Fractional results.
    assert cat("7/2=3.5\nGoal Reached!", nums=[7, 2], target=3) == "format_error"
    # Not every number used, even though the target is reached.
    assert cat("90-35=55\nGoal Reached!", nums=[90, 35, 1], target=55) == "rule_violation"
    # Text after `Goal Reached!`: strict refuses it; the paper's eval ignores it.
    assert cat(GOOD + "\n1+1=2") == "format_error"
    assert verify(NUMS, TARGET, GOOD + "\n1+1=2", strict=False).correct


def test_paper_mode_reproduces_the_papers_acceptance():
    # Floor division is accepted, and not all numbers need be used.
    assert verify([7, 2, 50], 3, "7/2=3\nGoal Reached!", strict=False).correct
    assert not verify([7, 2, 50], 3, "7/2=3\nGoal Reached!").correct
    # A step need only start with `a op b=c`.
    assert verify([90, 35], 55, "90-35=55 done\nGoal Reached!", strict=False).correct
    # Operands only need to be present; then all copies are removed.
    assert verify([5, 1], 10, "5+5=10\nGoal Reached!", strict=False).correct
    # Without a terminator the paper reports an invalid format.
    assert cat("90-35=55", strict=False, nums=[90, 35], target=55) == "format_error"
    assert cat("90-35=54\nGoal Reached!", strict=False, nums=[90, 35], target=55) == "computation_error"
    assert cat("90-36=54\nGoal Reached!", strict=False, nums=[90, 35], target=55) == "rule_violation"
    assert cat("90-35=55\n<backtrack>", strict=False, nums=[90, 35, 4], target=55) == "correct"


def test_paper_mode_follows_the_released_checker_where_it_differed():
    # The released checker strips the step block, splits it on newlines and keeps empty steps.
    for blank in ("", " ", "\t"):
        assert cat(f"90-35=55\n{blank}\n55+4=59\nGoal Reached!", strict=False, nums=[90, 35, 4],
                   target=59) == "format_error"
    for lead in (" ", "\t", "\n", " \n\t"):
        assert verify([90, 35], 55, f"{lead}90-35=55\nGoal Reached!", strict=False).correct
    # Numbers of any length it can parse: 14 characters with zero padding is accepted...
    assert verify([90, 37], 127, "00000000000090+37=00000000000127\nGoal Reached!", strict=False).correct
    # ...and so are Unicode digits, as Python's \d and int() read them.
    assert verify([20, 5], 25, "٢٠+5=25\nGoal Reached!", strict=False).correct
    # Only blank text before the terminator is an invalid step, as there.
    assert cat(" \nGoal Reached!", strict=False, nums=[5], target=5) == "format_error"


def test_strict_mode_takes_ascii_digits_without_leading_zeros_and_long_results():
    assert cat("٢٠+5=25\nGoal Reached!", nums=[20, 5], target=25) == "format_error"
    assert cat("２０+5=25\nGoal Reached!", nums=[20, 5], target=25) == "format_error"  # fullwidth
    assert cat("020+5=25\nGoal Reached!", nums=[20, 5], target=25) == "format_error"
    assert cat("20+5=025\nGoal Reached!", nums=[20, 5], target=25) == "format_error"
    assert cat("5-5=0\n0+7=7\nGoal Reached!", nums=[5, 5, 7], target=7) == "correct"
    # Intermediate results past 12 digits are legitimate when number_max is large.
    big = [999999, 999999, 999999, 1]
    steps = "999999*999999=999998000001\n999998000001*999999=999997000002999999\n"
    steps += "999997000002999999+1=999997000003000000\nGoal Reached!"
    assert verify(big, 999997000003000000, steps).correct
    # Blank lines and leading whitespace stay format errors in strict mode.
    assert cat("\n90-35=55\nGoal Reached!", nums=[90, 35], target=55) == "format_error"
    assert cat("90-35=55\n\nGoal Reached!", nums=[90, 35], target=55) == "format_error"


def test_huge_numbers_do_not_raise():
    assert cat("9" * 5000 + "+1=1\nGoal Reached!") == "format_error"
    assert cat("9" * 5000 + "+1=1\nGoal Reached!", strict=False) == "format_error"
    assert cat("9" * 4300 + "+1=1\nGoal Reached!", strict=False) == "format_error"  # where the released code crashes


@settings(max_examples=400, deadline=None)
@given(st.text(), st.lists(st.integers(0, 120), min_size=1, max_size=5), st.integers(0, 200), st.booleans())
def test_never_raises_on_arbitrary_text(text, nums, target, strict):
    v = verify(nums, target, text, strict=strict)
    assert v.category in CATEGORIES and v.correct == (v.category == "correct")


STEPISH = st.builds(
    lambda a, op, b, c: f"{a}{op}{b}={c}",
    st.integers(0, 200), st.sampled_from(["+", "-", "*", "/", "**", "%"]), st.integers(0, 200), st.integers(0, 400),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(STEPISH, st.sampled_from(["Goal Reached!", "<backtrack>", "", " "])), max_size=6),
       st.lists(st.integers(0, 99), min_size=2, max_size=4), st.integers(0, 100))
def test_never_raises_on_step_like_text(lines, nums, target):
    for strict in (True, False):
        v = verify(nums, target, "\n".join(lines), strict=strict)
        assert v.category in CATEGORIES
        if strict and v.correct:  # strict acceptance implies paper acceptance
            assert verify(nums, target, "\n".join(lines), strict=False).correct
