"""Run configs: presets validate; bad keys and values fail naming the field path; no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sbt_core.config import ConfigError, RunConfig, StudyConfig, load_run_config, load_study_config
from sbt_core.reports.pipeline import Models, metrics

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STUDIES = sorted(p.stem for p in CONFIGS.glob("*.yaml") if "domains" in yaml.safe_load(p.read_text()))
LADDERS = sorted(p.stem for p in CONFIGS.glob("*.yaml") if "rungs" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem not in STUDIES + LADDERS))
def test_presets_validate(preset):
    cfg = load_run_config(CONFIGS / f"{preset}.yaml")
    assert cfg.name == preset and isinstance(cfg, RunConfig)


@pytest.mark.parametrize("preset", LADDERS)
def test_ladder_presets_validate(preset):
    from flows.cli import resolve_preset
    from sbt_core.ladder import LadderConfig, load_ladder_config

    cfg = load_ladder_config(CONFIGS / f"{preset}.yaml", resolve=resolve_preset)
    assert cfg.name == preset and isinstance(cfg, LadderConfig) and len(cfg.rungs) >= 2


@pytest.mark.parametrize("preset", STUDIES)
def test_study_presets_validate(preset):
    cfg = load_study_config(CONFIGS / f"{preset}.yaml")
    assert cfg.name == preset and isinstance(cfg, StudyConfig) and cfg.domains
    for label, part in cfg.domains.items():
        assert part.domain == label and part.expert_iteration.rounds == 0  # a study part runs no expert iteration


def _countdown_generates() -> dict[str, object]:
    """Each distinct Countdown `generate` section of the presets small enough to run here, by its first preset."""
    found = {}
    for p in sorted(CONFIGS.glob("*.yaml")):
        if p.stem in LADDERS:
            continue
        parts = load_study_config(p).domains.values() if p.stem in STUDIES else [load_run_config(p)]
        for part in parts:
            g = part.generate
            if g.domain == "countdown" and g.num_train <= 50_000:
                found.setdefault(g.model_dump_json(), f"{p.stem}:{part.domain}")
    return {name: g for g, name in found.items()}


@pytest.mark.parametrize("where, generate", sorted(_countdown_generates().items()))
def test_countdown_presets_generate_every_split_in_full(where, generate):
    # tiny's val_seen came back 97 rows of 500 for months, and then an error: every preset fills what it asks
    from sbt_core.domains.countdown import generate as countdown
    from sbt_core.domains.countdown.config import GenerateConfig

    cfg = GenerateConfig.model_validate_json(generate).model_copy(update={"workers": 2})
    tables = countdown.generate(cfg)
    assert [len(tables[s]) for s in countdown.SPLITS] == [cfg.num_train, cfg.num_val_seen, cfg.num_val_new], where


def test_study_configs_name_the_field_path_of_a_bad_value():
    with pytest.raises(ConfigError) as e:
        load_study_config(CONFIGS / "smoke-study.yaml", ["domains.countdown.sft.max_stepz=3",
                                                         "domains.sudoku.generate.size=5",
                                                         "domains.countdown.study.ns=[0, 2]"])
    msg = str(e.value)
    assert "domains.countdown.sft.max_stepz: Extra inputs are not permitted" in msg
    assert "domains.sudoku.generate.size: Input should be 4, 6 or 9" in msg  # no union tag in the path
    assert "domains.countdown.study.ns: Value error, needs at least one value, every value >= 1" in msg
    with pytest.raises(ConfigError, match="domains.Count Down: domains has no entry 'Count Down'.*domains.\\+Count Down"):
        load_study_config(CONFIGS / "smoke-study.yaml", ["domains.Count Down={domain: countdown}"])  # a typo, not a new entry
    with pytest.raises(ConfigError, match="domains.Count Down: a label is lowercase"):
        load_study_config(CONFIGS / "smoke-study.yaml", ["domains.+Count Down={domain: countdown}"])
    with pytest.raises(ConfigError, match="models.dfs.recipe: sudoku has no 'mix' traces"):
        load_study_config(CONFIGS / "smoke-study.yaml", ["domains.sudoku.models.dfs.recipe=mix_trace"])


def test_paper_preset_has_the_papers_hyperparameters():
    cfg = load_run_config(CONFIGS / "paper-1b.yaml")
    assert (cfg.sft.learning_rate, cfg.sft.lr_scheduler, cfg.sft.epochs, cfg.sft.context_length) == (1e-5, "cosine", 3, 128)
    assert cfg.sft.deepspeed and cfg.expert_iteration.rounds == 3 and cfg.expert_iteration.method == "sbt_b1_n32"
    assert cfg.model.path and cfg.model.size is None


def test_overrides_are_dotted_and_typed():
    cfg = load_run_config(CONFIGS / "tiny.yaml", ["eval.limit=7", "build_data.error_type_ratio=[1,1,1]",
                                                  "expert_iteration.train.learning_rate=1e-4", "eval.limit=8"])
    assert cfg.eval.limit == 8 and cfg.build_data.error_type_ratio == (1, 1, 1)
    assert cfg.expert_iteration.train.learning_rate == 1e-4


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.limt=3", "eval.limt: Extra inputs are not permitted"),
        ("sft.batch_size=0", "sft.batch_size: Input should be greater than or equal to 1"),
        ("models.bt.methods=[greedy,nope]", "models.bt.methods: Value error, unknown method(s) ['nope']"),
        ("models.bt.recipe=bfs", "unknown recipe 'bfs'"),
        ("domain=chess", "domain: unknown domain 'chess'"),
        ("domain=sudoku", "generate.num_numbers: Extra inputs are not permitted"),
        ("expert_iteration.train.epochs=abc", "expert_iteration.train.epochs: Input should be a valid number"),
        ("model.path=/x", "model: Value error, set exactly one of `size`"),
        ("eval.limit", "is not of the form key.sub=value"),
        ("eval.limit.x=1", "eval.limit: is a value"),
        ("ablations.backtrack_per_optimal=[1,0]", "ablations.backtrack_per_optimal: Value error, every D_back:D_op"),
        ("ablations.search_grid=[sbt_b9_n1]", "ablations.search_grid: Value error, unknown method(s) ['sbt_b9_n1']"),
        ("ablations.error_type_ratios={a: [1, 2]}", "ablations.error_type_ratios.a.2: Field required"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_run_config(CONFIGS / "tiny.yaml", [override])
    assert message in str(e.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_run_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("generate:\n  num_trian: 5\n")
    with pytest.raises(ConfigError, match="generate.num_trian: Extra inputs"):
        load_run_config(tmp_path / "typo.yaml")


def test_sbt_run_rejects_bad_config_before_any_work(tmp_path):
    from flows.cli import app

    result = CliRunner().invoke(app, ["run", "-c", "smoke", "--run-dir", str(tmp_path / "r"), "--set", "sft.lr=1"])
    assert result.exit_code == 2
    assert "sft.lr: Extra inputs are not permitted" in result.output
    assert not (tmp_path / "r").exists()


def test_row_keys_follow_the_contract():
    """Rows are keyed by the config's model specs: the default models give the pipeline's contract."""
    models = Models(RunConfig().report_models())
    row_key = models.key
    assert [row_key("sft", m) for m in ("greedy", "beam", "best_of_n_8")] == ["sft_greedy", "sft_beam", "best_of_n_8"]
    assert [row_key("bt", m) for m in ("greedy", "beam", "sbt_b1_n32")] == ["bt_greedy", "bt_beam", "sbt_b1_n32"]
    assert row_key("ei2", "sbt_b1_n32") == "ei2_sbt_b1_n32"
    assert list(RunConfig().report_models()) == ["sft", "bt", "ei1", "ei2", "ei3"]
    # Another spec names its own rows, and `bare_methods` decides which carry the method's name alone.
    custom = RunConfig(models={"dfs": {"recipe": "dfs_trace", "methods": ["greedy", "sbt_b1_n8"],
                                       "bare_methods": ["sbt_*"]}}, expert_iteration={"model": "dfs", "rounds": 0})
    assert [Models(custom.report_models()).key("dfs", m) for m in ("greedy", "sbt_b1_n8")] == ["dfs_greedy", "sbt_b1_n8"]
    assert custom.report_models()["dfs"]["label"] == "SFT on DFS traces"
    with pytest.raises(ValueError, match="match no method"):
        RunConfig(models={"x": {"recipe": "optimal", "bare_methods": ["nosuch_*"]}})
    split = {"accuracy_strict": 0.5, "accuracy_paper": 0.25, "tokens_per_problem": 10.0, "false_claim_rate": 0.1,
             "false_claim_categories": {}, "problems": 4}
    rows = metrics({"bt": {"sbt_b1_n32": {"val_seen": split, "val_new": {**split, "accuracy_strict": 1.0}},
                           "greedy": {"val_seen": split, "val_new": split}}}, models, ("val_seen", "val_new"))
    assert list(rows) == ["bt_greedy", "sbt_b1_n32"]  # the configured method order, not alphabetical
    assert rows["sbt_b1_n32"]["accuracy_new"] == 1.0 and rows["sbt_b1_n32"]["accuracy_seen"] == 0.5


def test_seed_offset_shifts_every_seed_and_nothing_else():
    cfg = load_run_config(CONFIGS / "tiny.yaml")
    assert cfg.with_seed_offset(0) is cfg
    shifted = cfg.with_seed_offset(2)
    sections = ["generate", "build_data", "model", "sft", "eval", "grpo"]
    for name in sections:
        assert getattr(shifted, name).seed == getattr(cfg, name).seed + 2
    assert shifted.expert_iteration.train.seed == cfg.expert_iteration.train.seed + 2
    back = {n: getattr(shifted, n).model_copy(update={"seed": getattr(cfg, n).seed}) for n in sections}
    ei = shifted.expert_iteration.model_copy(update={"train": cfg.expert_iteration.train})
    assert shifted.model_copy(update={**back, "expert_iteration": ei}) == cfg


def test_generate_settings_must_be_the_runs_domain():
    with pytest.raises(ConfigError, match="generate.domain is 'sudoku' but domain is 'countdown'"):
        load_run_config(None, ["generate.domain=sudoku"])
    cfg = load_run_config(None, ["domain=sudoku", "generate.size=4", "models.bt.recipe=dfs_trace"])
    assert cfg.generate.size == 4 and cfg.models["bt"].recipe == "dfs_trace" and cfg.models["sft"].recipe == "optimal"
    with pytest.raises(ConfigError, match="models.bt.recipe: sudoku has no 'think' traces"):
        load_run_config(None, ["domain=sudoku", "models.bt.recipe=think_trace"])


def test_a_run_yaml_with_a_base_takes_the_presets_sections_and_merges_its_own(tmp_path):
    tiny, grpo = load_run_config(CONFIGS / "tiny.yaml"), load_run_config(CONFIGS / "tiny-grpo.yaml")
    assert (tiny.grpo.models, grpo.grpo.models, grpo.name) == ([], ["sft", "bt"], "tiny-grpo")
    assert grpo.grpo.steps == tiny.grpo.steps  # the base's other grpo fields stand
    assert grpo.model_dump(exclude={"name", "grpo"}) == tiny.model_dump(exclude={"name", "grpo"})
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_run_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nosuch\n")
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "c.yaml")


def test_trace_format_prompt_and_overflow_resolve_per_model_and_bad_ones_name_their_field():
    cfg = load_run_config(None, ["models.+dfs.recipe=dfs_trace", "models.dfs.data.trace_format=sbt"])
    _, model, sft, data = cfg.model_spec("dfs")
    assert data.recipe == "dfs_trace" and data.trace_format == "sbt" and sft.overflow == "split"
    assert model.vocabulary == "countdown-trace" and cfg.model_spec("bt")[2].overflow == "cut"
    assert cfg.model_spec("bt")[3].trace_format is None  # the run's build_data: the domain's first, released
    with pytest.raises(ConfigError, match="models.bt.data.prompt: 'state' is not a prompt of countdown's"):
        load_run_config(None, ["models.bt.data.prompt=state"])
    with pytest.raises(ConfigError, match="build_data.trace_format: sudoku writes traces as \\('sbt',\\)"):
        load_run_config(None, ["domain=sudoku", "generate.size=4", "models.bt.recipe=dfs_trace",
                               "build_data.trace_format=released"])
    with pytest.raises(ConfigError, match="model.numbers: Input should be 'digits' or 'chunks'"):
        load_run_config(None, ["model.numbers=words"])
    with pytest.raises(ConfigError, match="sft.overflow: Input should be 'cut', 'split' or 'drop'"):
        load_run_config(None, ["sft.overflow=wrap"])
