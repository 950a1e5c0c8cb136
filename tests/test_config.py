"""Typed config overrides."""

import dataclasses

import pytest

from metajax._src.experiment.config import ConfigError, apply_overrides, parse_value


@dataclasses.dataclass(frozen=True)
class Cfg:
    steps: int = 10
    lr: float = 0.1
    flag: bool = False
    name: str = "a"
    shots: tuple[int, ...] = (1, 5)
    lrs: tuple[float, ...] = (0.1,)


def test_overrides_are_parsed_to_field_types():
    cfg = apply_overrides(Cfg(), ["steps=3", "lr=1e-3", "flag=true", "name=b", "shots=1,5,10",
                                  "lrs=(0.5, 1)"])
    assert cfg == Cfg(steps=3, lr=1e-3, flag=True, name="b", shots=(1, 5, 10), lrs=(0.5, 1.0))
    assert isinstance(cfg.lrs[1], float)


def test_original_config_is_untouched():
    cfg = Cfg()
    apply_overrides(cfg, ["steps=3"])
    assert cfg.steps == 10


@pytest.mark.parametrize("override, expected", [
    ("steps=1.5", r"'steps' expects int; got '1.5'"),
    ("lr=fast", r"'lr' expects float"),
    ("flag=maybe", r"'flag' expects bool"),
    ("shots=1,x", r"'shots' expects tuple\[int, \.\.\.\]"),
    ("nope=1", r"Unknown config key 'nope'"),
    ("steps", r"not of the form key=value"),
])
def test_bad_override_names_key_and_lists_valid_keys(override, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        apply_overrides(Cfg(), [override])
    message = str(info.value)
    for field in ("steps: int = 10", "lr: float = 0.1", "shots: tuple[int, ...] = (1, 5)"):
        assert field in message


def test_parse_value_int_does_not_truncate():
    assert parse_value("7", int) == 7
    with pytest.raises(ValueError):
        parse_value("7.9", int)
