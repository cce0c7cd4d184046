"""One definition of every setting: pyproject's Flower config, the plans and the command line agree."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

from fedseg.config import (
    RUN_CONFIG_RENAMES,
    SEGMENTATION_SHARED_KEYS,
    SegmentationPlan,
    TrainingPlan,
    plan_from_run_config,
    segmentation_plan_from_run_config,
    unset_empty,
)

ROOT = Path(__file__).resolve().parents[2]
RUN_CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def _comparable(value):  # noqa: ANN001, ANN202
    if isinstance(value, Path | dt.date):
        return str(value)
    if isinstance(value, list):  # a run config spells a list comma-separated
        return ",".join(value)
    return value


def test_every_training_key_in_pyproject_is_a_plan_field_with_the_plans_default():
    """Before: learning-rate 0.005 in pyproject but 0.01 in the plan, round-timeout-s 600 s but
    3600 s, so code that built a plan directly trained differently from `flwr run .`."""
    from fedseg.config import TASK_PREFIXES

    keys = {k: v for k, v in RUN_CONFIG.items() if k != "task" and not k.startswith(tuple(TASK_PREFIXES.values()))}
    fields = {RUN_CONFIG_RENAMES.get(k, k.replace("-", "_")): v for k, v in keys.items()}
    assert set(fields) == set(TrainingPlan.model_fields), "pyproject and TrainingPlan name different settings"
    for name, value in unset_empty(fields).items():
        assert _comparable(TrainingPlan.model_fields[name].default) == _comparable(value), name
    assert plan_from_run_config(RUN_CONFIG) == TrainingPlan()


def test_every_segmentation_key_in_pyproject_is_a_plan_field_with_the_plans_default():
    keys = {k.removeprefix("segment-").replace("-", "_"): v for k, v in RUN_CONFIG.items() if k.startswith("segment-")}
    shared = set(SEGMENTATION_SHARED_KEYS.values())
    assert set(keys) | shared | {"budget"} == set(SegmentationPlan.model_fields)
    for name, value in unset_empty(keys).items():
        assert _comparable(SegmentationPlan.model_fields[name].default) == _comparable(value), name
    plan = segmentation_plan_from_run_config(RUN_CONFIG)
    assert plan.timeout_s == TrainingPlan().round_timeout_s and plan.min_units == TrainingPlan().min_available_units
    assert plan.model_dump(exclude={"timeout_s", "min_units"}) == \
        SegmentationPlan().model_dump(exclude={"timeout_s", "min_units"})


@pytest.mark.parametrize("prefix, plan_type, reader, shared_keys", [
    ("kpi-", "KpiPlan", "kpi_plan_from_run_config", "MONITORING_SHARED_KEYS"),
    ("tags-", "TagPlan", "tag_plan_from_run_config", "MONITORING_SHARED_KEYS"),
    ("effects-", "EffectsPlan", "effects_plan_from_run_config", "EFFECTS_SHARED_KEYS"),
])
def test_every_monitoring_key_in_pyproject_is_a_plan_field_with_the_plans_default(prefix, plan_type, reader,
                                                                                  shared_keys):
    import fedseg.config as config

    model = getattr(config, plan_type)
    keys = {k.removeprefix(prefix).replace("-", "_"): v for k, v in RUN_CONFIG.items() if k.startswith(prefix)}
    shared = set(getattr(config, shared_keys).values())
    assert set(keys) | shared | ({"budget"} if plan_type == "KpiPlan" else set()) == set(model.model_fields)
    for name, value in unset_empty(keys).items():
        assert _comparable(model.model_fields[name].get_default(call_default_factory=True)) == _comparable(value), name
    plan = getattr(config, reader)(RUN_CONFIG)
    assert plan.timeout_s == TrainingPlan().round_timeout_s and plan.min_units == TrainingPlan().min_available_units
    assert plan.model_dump(exclude={"timeout_s", "min_units"}) == model().model_dump(exclude={"timeout_s", "min_units"})


def test_an_effects_run_config_names_its_cells_comma_separated():
    from fedseg.config import effects_plan_from_run_config

    plan = effects_plan_from_run_config({**RUN_CONFIG, "effects-segments": "steady, at-risk",
                                         "effects-actions": "win-back offer", "effects-campaign-date": "2024-10-01",
                                         "effects-epsilon": 1.0, "effects-secagg": True})
    assert plan.segments == ["steady", "at-risk"] and plan.actions == ["win-back offer"]
    assert plan.campaign_date == dt.date(2024, 10, 1) and plan.epsilon == 1.0 and plan.secagg


def test_the_command_line_defaults_are_the_plans():
    import inspect

    from simulations.cli import segment, simulate

    params = inspect.signature(simulate).parameters
    for flag, field in (("rounds", "num_rounds"), ("learning_rate", "learning_rate"), ("local_epochs", "local_epochs"),
                        ("batch_size", "batch_size"), ("sample_rate", "sample_rate"), ("seed", "seed"),
                        ("max_grad_norm", "max_grad_norm"), ("clipping_norm", "clipping_norm"),
                        ("secagg_threshold", "secagg_threshold"), ("model", "model"), ("strategy", "strategy")):
        assert params[flag].default == TrainingPlan.model_fields[field].default, flag
    params = inspect.signature(segment).parameters
    for name in ("inactivity_days", "churn_threshold", "seed"):
        assert params[name].default == SegmentationPlan.model_fields[name].default, name


def test_a_simulation_holds_a_plan_rather_than_copies_of_its_fields():
    from simulations.runner import SimulationConfig

    cfg = SimulationConfig.from_settings(rounds=3, epsilon=2.0, privacy="user", units=4, seed=7)
    assert cfg.plan.num_rounds == 3 and cfg.plan.target_epsilon == 2.0 and cfg.plan.seed == cfg.seed == 7
    # the only names both hold are data-dependent: None in the simulation means "the dataset's own"
    # (CDNOW's cutoff, all units must reply), which then overrides the plan's
    assert set(SimulationConfig.model_fields) & set(TrainingPlan.model_fields) == \
        {"dataset", "cutoff", "horizon_days", "min_fit_units"}
    with pytest.raises(ValueError, match="unknown setting 'rounz'"):
        SimulationConfig.from_settings(rounz=3)
