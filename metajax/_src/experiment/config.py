"""Typed ``key=value`` overrides of frozen-dataclass experiment configs."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A config override names an unknown key or gives a value of the wrong type."""


def field_types(config_cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a dataclass config."""
    hints = typing.get_type_hints(config_cls)
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
        ConfigError: naming the bad override and listing the valid keys with their types.

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
    return dataclasses.replace(config, **changes)


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
    return config_cls(**converted)
