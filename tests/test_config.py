from dataclasses import dataclass, field
from typing import Literal

import pytest

from foundation.config import ConfigError, apply_overrides, from_dict, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Outer:
    name: str
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    paths: dict[str, str] = field(default_factory=dict)
    seed: int | None = None


def test_builds_nested_and_round_trips():
    cfg = from_dict(Outer, {"name": "x", "inner": {"lr": "3e-4", "betas": [0.9, 0.95]}, "paths": {"a": "b"}})
    assert cfg.inner.lr == pytest.approx(3e-4) and cfg.inner.betas == (0.9, 0.95)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "stepz": 1}, "stepz: unknown key"),
        ({"name": "x", "steps": "ten"}, "steps: expected int"),
        ({"name": "x", "steps": True}, "steps: expected int"),
        ({"name": "x", "mode": "c"}, "mode: expected one of"),
        ({"name": "x", "inner": {"lr": "fast"}}, "inner.lr: expected float"),
        ({"name": "x", "inner": {"betas": [0.9]}}, "inner.betas: expected 2 items"),
        ({}, "name: required key is missing"),
    ],
)
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, "cfg")


def test_overrides_parse_yaml_values():
    data = apply_overrides({"name": "x", "inner": {"lr": 1.0}}, ["inner.lr=0.5", "steps=3", "seed=null"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.lr == 0.5 and cfg.steps == 3 and cfg.seed is None
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["steps"])


def test_overrides_index_lists_and_name_bad_paths():
    data = {"tasks": [{"target": "a"}, {"target": "b", "weight": 1.0}], "optimizer": {"lr": 1.0}}
    out = apply_overrides(data, ["tasks.1.weight=2", "tasks.0.name=x", "optimizer.lr=0.5", "tasks.-1.target=c"])
    assert out["tasks"] == [{"target": "a", "name": "x"}, {"target": "c", "weight": 2}]
    assert data["tasks"][1]["weight"] == 1.0  # the input is not changed
    with pytest.raises(ConfigError, match=r"override tasks\.5\.weight: '5' is not an index of a list of 2"):
        apply_overrides(data, ["tasks.5.weight=2"])
    with pytest.raises(ConfigError, match=r"optimizer.lr.x: 'x' is inside a float"):
        apply_overrides(data, ["optimizer.lr.x=1"])
