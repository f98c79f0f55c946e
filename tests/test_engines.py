"""The two sampling engines (`sbt_core.search.engines`) against each other on the session's trained model.

vLLM's CPU build pins another transformers than the project, so these run in their own venv: `scripts/test.sh`
runs them there (`.venv-vllm`, made by `scripts/setup-vllm.sh`) with `-m vllm`; elsewhere they skip."""

from __future__ import annotations

import math

import pytest

from sbt_core import io
from sbt_core.config import SearchConfig, method_config
from sbt_core.domains import BACKTRACK
from sbt_core.search.common import make_generator
from sbt_core.search.decoders import sample_n
from sbt_core.search.run import lazy_lm, search

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

# On CPU the share of RAM vLLM counts this whole process against (its KV cache gets what is left): 5% left none
# by the time the suite had loaded its other models.
SHARE = 0.15
VLLM = {"engine": "vllm", "gpu_memory_utilization": SHARE}


@pytest.fixture(scope="module")
def lms(trained):
    _, model, _ = trained
    hf, vllm = lazy_lm(model, "countdown")(), lazy_lm(model, "countdown", inference=VLLM)()
    yield hf, vllm
    vllm.close_engine()


@pytest.fixture(scope="module")
def problems(data_dir):
    return [p for split in ("val_seen", "val_new")
            for p in io.read_parquet(str(data_dir / f"{split}.parquet")).select(["nums", "target"]).to_pylist()]


def test_greedy_gives_the_same_tokens_and_log_probs_through_both_engines(lms, problems):
    hf, vllm = lms
    prompts = [hf.prompt_ids(p) for p in problems]
    a, passes = hf.sample(prompts, temperature=0, max_new_tokens=48, batch_rows=64, generator=None)
    b, none = vllm.sample(prompts, temperature=0, max_new_tokens=48, batch_rows=64, generator=None)
    assert b.tokens == a.tokens
    assert all(t[-1] in hf.stop_ids or len(t) == 48 for t in b.tokens)  # the stop token is kept
    worst = max(abs(x - y) for la, lb in zip(a.logprobs, b.logprobs) for x, y in zip(la, lb))
    assert worst < 1e-4, worst
    # What vLLM does not report is absent, not estimated.
    assert (b.forward_passes, b.watched, none) == (None, None, None) and passes and a.watched


def test_backtrack_stops_are_taken_at_the_same_places_through_both_engines(lms, trained):
    """States that end in a wrong step (the D_back rows minus their `<backtrack>`): the trained model takes the step
    back; both engines stop there with `<backtrack>` kept and agree token for token."""
    hf, vllm = lms
    rows = [r for r in io.read_parquet(trained[2]).to_pylist() if r["kind"] == "backtrack"][:200]
    prompts = [hf.encode(r["prompt"]) + hf.tokenizer(r["response"].removesuffix(BACKTRACK),
                                                     add_special_tokens=False)["input_ids"] for r in rows]
    a, _ = hf.sample(prompts, temperature=0, max_new_tokens=16, batch_rows=256, generator=None)
    b, _ = vllm.sample(prompts, temperature=0, max_new_tokens=16, batch_rows=256, generator=None)
    assert b.tokens == a.tokens
    backs = sum(t[-1] == hf.backtrack_id for t in b.tokens)
    assert backs >= len(rows) // 4, f"{backs} of {len(rows)} took the step back"


def test_self_backtracking_search_rolls_back_and_re_expands_the_same_through_both_engines(lms, problems):
    """At temperature 0 the search is deterministic: the same continuations, rollbacks, re-expanded states and
    answers; scores agree to float tolerance; vLLM reports no `value` and no model calls."""
    hf, vllm = lms
    cfg = SearchConfig(decoder="self_backtrack", n=2, backtrack_budget=2, temperature=0, max_new_tokens=48)
    a, b = search(hf, problems, cfg), search(vllm, problems, cfg)
    assert sum(r.rounds > 1 for r in a) >= 2, "too few searches took a step back to test the rollback"
    assert [r.output for r in b] == [r.output for r in a]
    assert [(r.rounds, r.generated_tokens) for r in b] == [(r.rounds, r.generated_tokens) for r in a]
    for ra, rb in zip(a, b):
        assert [c["response"] for c in rb.candidates] == [c["response"] for c in ra.candidates]
        assert all(math.isclose(x["score"], y["score"], abs_tol=1e-5) for x, y in zip(ra.candidates, rb.candidates))
        assert rb.forward_passes is None and all(c["value"] is None for c in rb.candidates)


def test_sampled_decoding_matches_the_hf_engine_within_the_interval_and_reports_raw_log_probs(lms, problems):
    """Samples at temperature 0.7: the share that claims the goal and the share that verifies agree between the
    engines within the 95% interval of their difference; vLLM's log-probs are the model's untempered ones (the HF
    model's teacher-forced log-softmax of the same tokens), the quantity every selector ranks by."""
    import torch

    hf, vllm = lms
    cfg = SearchConfig(max_new_tokens=48)
    shares = {}
    for name, lm in (("hf", hf), ("vllm", vllm)):
        per_problem = sample_n(lm, problems, cfg, 8, 0.7, make_generator(4, lm.device))
        flat = [(p, s) for p, (samples, _) in zip(problems, per_problem) for s in samples]
        shares[name] = (sum(hf.domain.claims_goal(t) for _, (t, *_) in flat) / len(flat),
                        sum(hf.domain.verify(p, t).correct for p, (t, *_) in flat) / len(flat), len(flat))
    n = shares["hf"][2]
    for p, q in zip(shares["hf"][:2], shares["vllm"][:2]):
        assert abs(p - q) <= 1.96 * math.sqrt(max(p * (1 - p) + q * (1 - q), 1e-9) / n), shares
    prompts = [hf.prompt_ids(p) for p in problems[:16]]
    out, _ = vllm.sample(prompts, temperature=0.7, max_new_tokens=48, batch_rows=64, generator=make_generator(0, "cpu"))
    worst = 0.0
    with torch.no_grad():
        for prompt, tokens, logprobs in zip(prompts, out.tokens, out.logprobs):
            ids = torch.tensor([prompt + tokens])
            logp = torch.log_softmax(hf.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
            forced = logp.gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1).tolist()
            worst = max(worst, *(abs(x - y) for x, y in zip(forced, logprobs)))
    assert worst < 1e-4, worst


def test_a_seeded_vllm_call_draws_the_same_samples_again(lms, problems):
    _, vllm = lms
    prompts = [vllm.prompt_ids(p) for p in problems[:8] for _ in range(4)]
    draw = [vllm.sample(prompts, temperature=0.7, max_new_tokens=48, batch_rows=64,
                        generator=make_generator(seed, "cpu"))[0].tokens for seed in (1, 1, 2)]
    assert draw[0] == draw[1] != draw[2]


def test_the_evaluate_stage_runs_each_method_on_its_engine(trained, data_dir, tmp_path, lms):
    """An evaluation with `engine: vllm`: greedy and the search on vLLM, beam on HF (the engine is closed before the
    HF model loads); greedy's numbers equal the HF engine's, and vLLM's rows record no model calls."""
    from sbt_core import evaluate
    from sbt_core.config import EvalConfig

    _, model, _ = trained
    lms[1].close_engine()  # this test loads its own engines: one vLLM engine at a time in this process
    methods = ["greedy", "beam", "sbt_b1_n8"]
    runs = {}
    for engine in ("hf", "vllm"):
        cfg = EvalConfig(limit=16, max_new_tokens=48, engine=engine, gpu_memory_utilization=SHARE)
        out = evaluate.run(model, str(data_dir), str(tmp_path / engine), {m: cfg.search_config(m) for m in methods})
        runs[engine] = io.read_json(out["summary"])
    hf, vl = runs["hf"], runs["vllm"]
    assert set(vl) == set(methods)
    for split in hf["greedy"]:
        assert vl["greedy"][split]["accuracy_strict"] == hf["greedy"][split]["accuracy_strict"]
        assert {**vl["beam"][split], "seconds": 0} == {**hf["beam"][split], "seconds": 0}  # beam ran on HF in both
        assert vl["greedy"][split]["forward_passes_per_problem"] is None
        assert vl["sbt_b1_n8"][split]["forward_passes_per_problem"] is None
        assert "value" not in vl["sbt_b1_n8"][split].get("selectors", {})
    assert method_config("beam", engine="hf").engine == "hf"


def test_the_study_and_the_on_policy_harvest_run_on_vllm(trained, data_dir, tmp_path, lms):
    """Every kind of study-eval and the on-policy harvest through `engine: vllm`; the greedy budget curve equals the
    HF engine's (greedy tokens are identical)."""
    from sbt_core import build_data, onpolicy, study
    from sbt_core.config import BuildDataConfig, OnPolicyConfig, StudyEvalConfig

    _, model, _ = trained
    lms[1].close_engine()
    cfg = StudyEvalConfig(split="val_new", limit=6, ns=[1, 4], budgets=[8, 40], direct_max_new_tokens=40,
                          search_methods=["sbt_b1_n8"], batch_rows=512, engine="vllm", gpu_memory_utilization=SHARE)
    found = {kind: io.read_json(study.run(model, str(data_dir), str(tmp_path / kind), cfg, kind=kind,
                                          max_new_tokens=40)["study"]) for kind in study.KINDS}
    assert set(found["samples"]["curves"]) == {"pass_at_n", "best_of_n", "majority_at_n"}
    assert {p["method"] for p in found["search"]["curves"]["search"]} == {"sbt_b1_n8"}
    hf = io.read_json(study.run(model, str(data_dir), str(tmp_path / "hf"), cfg.model_copy(update={"engine": "hf"}),
                                kind="budget")["study"])
    greedy = found["budget"]["curves"]["greedy"]
    assert [p["accuracy"] for p in greedy] == [p["accuracy"] for p in hf["curves"]["greedy"]]
    base = build_data.run(BuildDataConfig(), str(data_dir / "train.parquet"), str(tmp_path / "base"))["sft"]
    op = OnPolicyConfig(source=model, problems=100, samples=4, engine="vllm", gpu_memory_utilization=SHARE)
    out = onpolicy.run(op, model, str(data_dir / "train.parquet"), base, str(tmp_path / "op"))
    stats = io.read_json(str(tmp_path / "op" / "manifest.json"))["stats"]
    assert stats["samples"] > 0 and stats["rows"] == len(io.read_parquet(out["sft"])) - len(io.read_parquet(base))
