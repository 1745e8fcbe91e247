"""The recipe schema: strict loading with key paths, overrides, checks against the teacher, shipped recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tm_distill.recipe import Recipe, RecipeError, StageConfig, dump_recipe, load_recipe, recipe_from_dict
from tm_distill.training.resolve import resolve_plan, teacher_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))  # compare/ included


def _raw(**top):
    raw = {"teacher": "smollm2-135m", "stages": [{"name": "matrix", "steps": 4}, {"name": "logits", "steps": 8}]}
    raw.update(top)
    return raw


def test_every_shipped_recipe_loads_and_validates():
    assert {p.parent.name + "/" + p.name for p in RECIPES} >= {
        "smollm2-135m/cpu-demo.yaml", "smollm2-135m/gpu-cycle.yaml", "llama-3.2-1b/attn25.yaml",
        "llama-3-8b/cycle-multigpu.yaml", "compare/B-mil.yaml", "compare/C-full.yaml", "compare/D-sampled.yaml",
        "compare/E-logits-only.yaml"}
    for path in RECIPES:
        recipe = load_recipe(path)
        plan = resolve_plan(recipe, teacher_config(recipe.teacher))  # uncached hub teachers: schema only
        assert [s.name for s in plan.stages] == [s.name for s in recipe.stages]
        assert all(s.steps > 0 and s.tokens > 0 for s in plan.stages)
        assert any(line.startswith("transpoints:") for line in plan.lines())


def test_no_shipped_recipe_trains_on_the_held_out_domain():
    """python-docs is the comparison's held-out domain: no training source, calibration or mixture entry reads it."""
    for path in RECIPES:
        recipe = load_recipe(path)
        used = [recipe.data.source, recipe.data.heldout_source, recipe.calibrate and recipe.calibrate.data]
        used += [v for e in recipe.data.mixture or [] for v in (e.source, e.prefixes, e.filler)]
        assert "python-docs" not in used, path


def test_cpu_demo_resolves_against_the_real_teacher():
    recipe = load_recipe(next(p for p in RECIPES if p.name == "cpu-demo.yaml"))
    plan = resolve_plan(recipe, teacher_config(recipe.teacher))
    assert plan.num_layers == 30 and len(plan.transpoints) == 30
    assert len(set(plan.transpoints)) > 1  # never one shared switch position
    assert [s.name for s in plan.stages] == ["matrix", "hidden", "logits"]


def test_llama_1b_recipe_has_a_quarter_attention_layers():
    from tm_distill.convert import parse_transpoints
    from tm_distill.models import ATTENTION_ONLY

    recipe = load_recipe(next(p for p in RECIPES if p.name == "attn25.yaml"))
    tps = parse_transpoints(recipe.transpoints, 16)  # Llama-3.2-1B has 16 layers
    assert sum(p == ATTENTION_ONLY for p in tps) == 4 and tps.count(0) == 12


def test_calibrate_is_off_by_default_and_overrides_switch_it(smol):
    assert recipe_from_dict(_raw()).calibrate is None
    recipe = recipe_from_dict(_raw(), ["calibrate.windows=2"])
    assert (recipe.calibrate.windows, recipe.calibrate.data, recipe.calibrate.seq_len) == (2, None, None)
    assert recipe_from_dict(_raw(calibrate={"data": "x.txt"}), ["calibrate=null"]).calibrate is None
    lines = resolve_plan(recipe, smol.model.config).lines()
    assert "calibrate: 2 window(s) x 256 tokens of shakespeare (training split), 1 held-out" in lines


def test_round_trip_through_yaml(tmp_path):
    recipe = recipe_from_dict(_raw())
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe


@pytest.mark.parametrize("raw, key, words", [
    (_raw(bogus=1), "bogus", "unknown key"),
    (_raw(data={"seqlen": 64}), "data.seqlen", "did you mean 'seq_len'"),
    (_raw(stages=[{"name": "logits", "steps": 3, "loss": {"temprature": 2}}]), "stages[0].loss.temprature",
     "unknown key"),
    (_raw(stages=[{"name": "logits", "steps": "ten"}]), "stages[0].steps", "expected an integer"),
    (_raw(seed=1.5), "seed", "expected an integer"),
    (_raw(stages=[{"name": "logits", "steps": 3, "loss": {"normalize": "yes"}}]), "stages[0].loss.normalize",
     "true or false"),
    (_raw(stages=[{"name": "matrix", "steps": 3}, {"name": "logits", "steps": 3, "optimizer": {"lr": -1}}]),
     "stages[1].optimizer.lr", "must be > 0"),
    (_raw(stages=[{"name": "logit", "steps": 3}]), "stages[0].name", "valid stages: matrix, hidden, logits"),
    (_raw(stages=[{"name": "logits", "steps": 0}]), "stages[0].steps", "budget must be > 0"),
    (_raw(stages=[{"name": "logits", "tokens": -5}]), "stages[0].tokens", "budget must be > 0"),
    (_raw(stages=[{"name": "logits"}]), "stages[0].steps", "give steps or tokens"),
    (_raw(data={"max_tokens": 0}), "data.max_tokens", "budget must be > 0"),
    (_raw(stages=[{"name": "logits", "steps": 3, "precision": "fp16"}]), "stages[0].precision", "fp32, bf16"),
    (_raw(stages=[{"name": "matrix", "steps": 3, "trainable": "lora"}]), "stages[0].trainable", "only for the logits"),
    (_raw(stages=[]), "stages", "at least one stage"),
    (_raw(calibrate={"windows": 0}), "calibrate.windows", "must be >= 1"),
    (_raw(calibrate={"seq_len": 1}), "calibrate.seq_len", "must be > 1"),
    (_raw(calibrate={"window": 2}), "calibrate.window", "did you mean 'windows'"),
    (_raw(calibrate=True), "calibrate", "expected a mapping"),
    (_raw(calibrate={}, student="runs/s"), "calibrate", "converted on the fly"),
    (_raw(calibrate={}, ssm={"use_z_gate": True}), "calibrate", "z gate"),
    ({"stages": [{"name": "logits", "steps": 3}]}, "teacher", "missing required key"),
    (_raw(stages=[{"name": "logits", "steps": 3, "on_policy": {"lmbda": 0.2}}]), "stages[0].on_policy",
     "only the onpolicy stage"),
    (_raw(stages=[{"name": "onpolicy", "steps": 3, "on_policy": {"lmbda": 1.5}}]), "stages[0].on_policy.lmbda",
     "must be in [0, 1]"),
    (_raw(stages=[{"name": "onpolicy", "steps": 3, "on_policy": {"temperature": -1}}]),
     "stages[0].on_policy.temperature", "0: greedy"),
    (_raw(stages=[{"name": "onpolicy", "steps": 3, "loss": {"kind": "reverse_kl"}}]), "stages[0].loss.kind",
     "set on_policy.beta"),
    (_raw(stages=[{"name": "onpolicy", "steps": 3, "loss": {"ce_weight": 0.1}}]), "stages[0].loss.ce_weight",
     "without CE"),
    (_raw(stages=[{"name": "onpolicy", "steps": 3, "seq_len": 64, "on_policy": {"prompt_tokens": 48,
                                                                                "new_tokens": 32}}]),
     "stages[0].on_policy.new_tokens", "80 is longer than the stage's seq_len 64"),
])
def test_bad_recipes_fail_naming_the_key(raw, key, words):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw)
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ") and words in str(err.value)


def test_onpolicy_stage_takes_gkd_options_and_lora():
    raw = _raw(stages=[{"name": "logits", "steps": 2},
                       {"name": "onpolicy", "steps": 4, "trainable": "lora", "on_policy": {"lmbda": 0.25}}])
    recipe = recipe_from_dict(raw, ["stages.onpolicy.on_policy.new_tokens=64", "stages.onpolicy.on_policy.beta=0"])
    op = recipe.stages[1].on_policy
    assert (op.lmbda, op.beta, op.prompt_tokens, op.new_tokens, op.temperature) == (0.25, 0.0, 128, 64, 1.0)
    assert recipe.stages[0].on_policy == type(op)()  # other stages keep the defaults, unused
    lines = resolve_plan(recipe, None).lines()
    assert any("onpolicy" in line and "4 steps" in line for line in lines)
    assert "      on-policy: 128 tokens sampled by the student (0.25 of the micro-batches: 128 prompt + 64 new " \
           "tokens each, temperature 1), generalized JSD beta 0; the budget counts data windows" in lines


def test_overrides_by_index_by_stage_name_and_lr_shorthand():
    recipe = recipe_from_dict(_raw(stages=[{"name": "matrix", "steps": 4, "lr": 1e-3}, {"name": "logits", "steps": 8}]),
                              ["seed=3", "data.seq_len=64", "stages.1.optimizer.lr=3e-4", "stages.matrix.steps=9",
                               "stages.logits.loss.kind=jsd", "stages.0.lr=2e-3", "ssm.use_conv=true"])
    assert recipe.seed == 3 and recipe.data.seq_len == 64 and recipe.ssm == {"use_conv": True}
    assert recipe.stages[0].steps == 9 and recipe.stages[0].optimizer.lr == 2e-3
    assert recipe.stages[1].optimizer.lr == 3e-4 and recipe.stages[1].loss.kind == "jsd"
    assert isinstance(recipe, Recipe) and isinstance(recipe.stages[1], StageConfig)


def test_a_stage_lr_beside_an_optimizer_that_is_no_mapping_names_the_optimizer():
    with pytest.raises(RecipeError, match=r"stages\[0\]\.optimizer: expected a mapping, got str"):
        recipe_from_dict(_raw(stages=[{"name": "logits", "steps": 4, "lr": 1e-3, "optimizer": "adam"}]))


@pytest.mark.parametrize("override, key", [
    ("stages.5.steps=1", "stages.5"), ("stages.hiden.steps=1", "stages.hiden"), ("nokey", "nokey"),
    ("stages.0.lr=-1", "stages[0].optimizer.lr"), ("data.seq_len=abc", "data.seq_len"),
])
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(_raw(), [override])
    assert err.value.key == key


def test_checks_against_the_real_teacher(smol):
    config = smol.model.config
    too_long = config.max_position_embeddings + 1
    with pytest.raises(RecipeError, match=rf"^stages\[1\]\.seq_len: {too_long} is longer than the teacher supports"):
        resolve_plan(recipe_from_dict(_raw(), [f"stages.1.seq_len={too_long}"]), config)
    with pytest.raises(RecipeError, match=r"^data\.seq_len: "):
        resolve_plan(recipe_from_dict(_raw(), [f"data.seq_len={too_long}"]), config)
    with pytest.raises(RecipeError, match=r"^transpoints: .*'x'"):
        resolve_plan(recipe_from_dict(_raw(transpoints="cycle=0,x")), config)
    with pytest.raises(RecipeError, match=r"^calibrate\.seq_len: "):
        resolve_plan(recipe_from_dict(_raw(calibrate={"seq_len": too_long})), config)
    with pytest.raises(RecipeError, match=r"^stages\[0\]\.loss\.layers: "):
        resolve_plan(recipe_from_dict(_raw(), ["stages.0.loss.layers=[0,30]"]), config)
    plan = resolve_plan(recipe_from_dict(_raw(transpoints="attn=0,10,20;ssm=rest"), ["stages.1.tokens=1000",
                                                                                      "stages.1.steps=null"]), config)
    assert (plan.stages[1].steps, plan.stages[1].tokens) == (2, 1024)  # ceil(1000 / (2 * 1 * 256))


def test_missing_teacher_fails_naming_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"^teacher: .*does not exist"):
        teacher_config(str(tmp_path / "no-such-model"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecipeError, match=r"^teacher: .*config.json"):
        teacher_config(str(empty))
    assert teacher_config("some-org/not-cached-model") is None  # hub id, never downloaded here


# ---------------------------------------------------------------------- hostile or malformed YAML
_BOMB = "teacher: x\nstages: [{name: logits, steps: 1}]\nssm:\n  a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"  {n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdef", "bcdefg"))


def test_a_yaml_alias_bomb_is_refused_before_any_work(tmp_path):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(_BOMB)
    assert len(_BOMB) < 400
    start = time.perf_counter()
    with pytest.raises(RecipeError, match=r"aliases \(\*name\) make it too large: it expands to 6,053,462 values"):
        load_recipe(path)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(RecipeError, match="too large"):  # in an override too
        recipe_from_dict(_raw(), ["ssm=" + "{" + _BOMB.split("ssm:\n")[1].replace("\n  ", ", ").strip() + "}"])


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("teacher: smollm2-135m\nstages:\n  - &s {name: matrix, steps: 4, lr: 1.0e-3}\n"
                    "  - {<<: *s, name: logits}\n")
    recipe = load_recipe(path)
    assert [(s.name, s.steps, s.optimizer.lr) for s in recipe.stages] == [("matrix", 4, 1e-3), ("logits", 4, 1e-3)]


@pytest.mark.parametrize("override, fragment", [
    ("data.source=*.txt", "data.source: '*.txt' is not a YAML value"),
    ("stages.0.lr=[1,", "stages.0.lr: '[1,' is not a YAML value"),
    ("name=@me", "name: '@me' is not a YAML value (found character '@' that cannot start any token)"),
    ("seed=-1", "seed: must be in [0, 2**32 - 1]"),
    ("seed=4294967296", "seed: must be in [0, 2**32 - 1]"),
])
def test_malformed_override_values_and_unusable_seeds_name_the_key(override, fragment):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(_raw(), [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_quoted_override_is_text():
    assert recipe_from_dict(_raw(), ['data.source="*.txt"']).data.source == "*.txt"
    assert recipe_from_dict(_raw(), ["seed=4294967295"]).seed == 2**32 - 1


def test_a_recipe_file_that_is_not_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("teacher: smollm2-135m\nstages: [{name: logits, steps: 4}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path} is not valid YAML: expected ',' or ']', but got '<stream end>' at line 3, column 1"


def test_a_lower_user_error_names_the_recipe_key_and_file():
    from tm_distill.data.loading import DataSourceError
    from tm_distill.recipe import recipe_file, recipe_key

    with pytest.raises(RecipeError) as caught, recipe_file("r.yaml"), recipe_key("data.source"):
        raise DataSourceError("/nowhere does not exist: give a file or folder")
    err = caught.value
    assert (err.key, err.what, err.file) == ("data.source", "data.source", "r.yaml")
    assert str(err) == "bad recipe r.yaml: data.source: /nowhere does not exist: give a file or folder"
    with pytest.raises(RecipeError, match=r"^bad recipe r\.yaml: seed: not an int$"), recipe_file("r.yaml"), \
            recipe_key("data"):
        raise RecipeError("seed", "not an int")  # a RecipeError keeps its own key
    with pytest.raises(KeyError), recipe_key("data"):  # a bug is not a user error: it stays what it is
        raise KeyError("x")
