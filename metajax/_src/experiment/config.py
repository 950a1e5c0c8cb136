"""Typed ``key=value`` overrides of frozen-dataclass experiment configs, and their checks.

A field's rule lives in its annotation: ``num_steps: Steps = 1000`` with
``Steps = Annotated[int, Rule(low=1, high=10**9)]``. :func:`validate_config` checks every
field (its type, its rule, tuples non-empty) and then the config's own ``validate()`` for
rules across fields, before any work starts; :func:`apply_overrides` and
:func:`config_from_dict` call it. A subclass that changes a default (``num_steps: int = 600``)
keeps the rule of the class that declared it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple


class ConfigError(ValueError):
    """A config names an unknown key, or gives a value of the wrong type or out of range."""


class Rule(NamedTuple):
    """The admissible values of a config field (of each item, for a tuple field).

    Attributes:
        low: smallest value (``None``: no bound).
        high: largest value.
        low_open: ``low`` itself is excluded (``> low``).
        choices: the allowed values (strings, e.g. a model name).
        allow_empty: a tuple field may be empty.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple | None = None
    allow_empty: bool = False

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {tuple(self.choices)}"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " and ".join(parts) or "any value"

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


Steps = Annotated[int, Rule(low=1, high=10**9)]  # step counts and intervals
Count = Annotated[int, Rule(low=1, high=10**8)]  # sizes: tasks, examples, widths
Size = Annotated[tuple[int, ...], Rule(low=1, high=10**6, allow_empty=True)]  # widths; () = none
Rate = Annotated[float, Rule(low=0.0)]  # step sizes that may be 0
PositiveRate = Annotated[float, Rule(low=0.0, low_open=True)]
Rates = Annotated[tuple[float, ...], Rule(low=0.0, low_open=True)]  # a grid of step sizes
StepCounts = Annotated[tuple[int, ...], Rule(low=0, high=10**6)]  # e.g. evaluation steps
TestTasks = Annotated[int, Rule(low=2, high=10**8)]  # a confidence interval needs two
NonNegative = Annotated[int, Rule(low=0, high=10**9)]  # counts where 0 means "none"
Way = Annotated[int, Rule(low=2, high=10**5)]  # classes per episode
MetaBatch = Annotated[int, Rule(low=1, high=10**5)]  # tasks per outer step


def one_of(*choices: str) -> Any:
    """The annotation of a string field with a fixed set of values."""
    return Annotated[str, Rule(choices=tuple(choices))]


def _rules(config_cls: type) -> dict[str, Rule]:
    """The rule of every field that has one, from the first class of the MRO declaring it."""
    rules: dict[str, Rule] = {}
    for cls in config_cls.__mro__:
        if not dataclasses.is_dataclass(cls):
            continue
        hints = typing.get_type_hints(cls, include_extras=True)
        for name in getattr(cls, "__annotations__", {}):
            extras = getattr(hints.get(name), "__metadata__", ())
            rule = next((m for m in extras if isinstance(m, Rule)), None)
            if rule is not None and name not in rules:
                rules[name] = rule
    return rules


def _type_ok(value: Any, tp: Any) -> bool:
    if typing.get_origin(tp) is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis} or {str}
        return isinstance(value, tuple) and all(_type_ok(v, item) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def validate_config(config: Any) -> Any:
    """Checks every field of the frozen-dataclass ``config``, then ``config.validate()``.

    Raises:
        ConfigError: ``"<field>: expected <what>; got <value>"`` for the first bad field.

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     num_steps: Steps = 10
        ...     hidden: Size = (8,)
        >>> try:
        ...     validate_config(C(num_steps=0))
        ... except ConfigError as err:
        ...     print(err)
        num_steps: expected an int >= 1 and <= 1e+09; got 0.
    """
    types, rules = field_types(type(config)), _rules(type(config))
    for name, tp in types.items():
        value = getattr(config, name)
        if not _type_ok(value, tp):
            raise ConfigError(f"{name}: expected {_a(_type_name(tp))}; got {value!r}.")
        rule = rules.get(name)
        if typing.get_origin(tp) is tuple:
            if not value and not (rule and rule.allow_empty):
                raise ConfigError(f"{name}: expected at least one value; got an empty tuple.")
            bad = [v for v in value if rule is not None and not rule.admits(v)]
            if bad:
                raise ConfigError(f"{name}: expected every value {rule.describe()}; got "
                                  f"{bad[0]!r} in {value!r}.")
        elif rule is not None and not rule.admits(value):
            what = rule.describe() if rule.choices else f"{_a(_type_name(tp))} {rule.describe()}"
            raise ConfigError(f"{name}: expected {what}; got {value!r}.")
    check = getattr(config, "validate", None)
    if callable(check):
        check()
    return config


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def field_types(config_cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a dataclass config."""
    hints = typing.get_type_hints(config_cls)  # Annotated[...] stripped to its type
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        return f"tuple[{args[0].__name__}, ...]" if args else "tuple"
    return getattr(tp, "__name__", str(tp))


def describe_fields(config_cls: type) -> str:
    """One ``name: type = default`` line per field, for error messages and ``metajax list``."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    return "\n".join(f"  {name}: {_type_name(tp)} = {defaults[name]!r}"
                     for name, tp in field_types(config_cls).items())


def _parse_scalar(text: str, tp: type) -> Any:
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{text!r} is not a bool (true/false)")
    if tp is int:
        return int(text)  # int("1.5") raises: no silent truncation
    if tp is float:
        return float(text)
    if tp is str:
        return text
    raise ValueError(f"unsupported field type {tp!r}")


def parse_value(text: str, tp: Any) -> Any:
    """Parses ``text`` as a value of type ``tp`` (bool, int, float, str, or tuple of those)."""
    if typing.get_origin(tp) is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis} or {str}
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_parse_scalar(p.strip(), item) for p in parts)
    return _parse_scalar(text, tp)


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
    """Returns a copy of the frozen dataclass ``config`` with ``key=value`` overrides applied.

    Args:
        config: a dataclass instance.
        overrides: strings such as ``"num_steps=100"`` or ``"eval_steps=1,5"``.

    Raises:
        ConfigError: naming the bad override and listing the valid keys with their types, or
            (:func:`validate_config`) the first field out of its range.

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     lr: float = 0.1
        ...     steps: tuple[int, ...] = (1,)
        >>> apply_overrides(C(), ["lr=0.5", "steps=1,5"])
        C(lr=0.5, steps=(1, 5))
    """
    types = field_types(type(config))
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"Override {item!r} is not of the form key=value.\nValid keys:\n"
                              f"{describe_fields(type(config))}")
        if key not in types:
            raise ConfigError(f"Unknown config key {key!r}.\nValid keys:\n"
                              f"{describe_fields(type(config))}")
        try:
            changes[key] = parse_value(text, types[key])
        except ValueError as err:
            raise ConfigError(
                f"Config key {key!r} expects {_type_name(types[key])}; got {text!r} ({err}).\n"
                f"Valid keys:\n{describe_fields(type(config))}") from None
    return validate_config(dataclasses.replace(config, **changes))


def config_from_dict(config_cls: type, values: dict) -> Any:
    """Rebuilds a config from its JSON form (lists become tuples), checking every key.

    Raises:
        ConfigError: for keys the config does not have.
    """
    types = field_types(config_cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"Stored config has keys {unknown} that {config_cls.__name__} does not "
                          f"have.\nValid keys:\n{describe_fields(config_cls)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return validate_config(config_cls(**converted))
