"""The kill drill (scripts/kill_drill.py) once over every stage: opt-in, about 15 minutes on 2 cores."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_kill_in_every_stage_then_a_rerun_gives_the_same_artifacts(tmp_path, capsys):
    from scripts.kill_drill import STAGES, main

    assert main(["--trials", str(len(STAGES)), "--seed", "1", "--workdir", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    trials, hit, mismatches = (int(part.split(": ")[1]) for part in last.split(", "))
    assert trials == len(STAGES) and mismatches == 0
    assert hit >= len(STAGES) // 2, last  # the shortest stages (build data, distill) can finish first
