"""Typed configuration: YAML files mapped onto dataclasses and validated on load.

Every component owns one dataclass. ``from_dict`` builds it from plain data, recursing into
nested dataclasses, and rejects unknown keys and values of the wrong type with an error that
names the key (``ConfigError: data.views.fov_deg: expected a number, got 'wide'``).
``load_config`` reads a YAML file, applies ``key.sub=value`` overrides and validates.

Numeric fields carry their valid range in the annotation, checked on load with the key named
(``ConfigError: optim.min_lr_ratio: -1.0 is out of range, must be in [0, 1]``)::

    lr: Annotated[float, Positive] = 1e-4
    min_lr_ratio: Annotated[float, Range(0, 1)] = 0.1

NaN and infinite numbers are refused everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric field: ``low <= x <= high`` (``<`` on an open end)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")


Positive = Range(0, low_open=True)  # > 0
NonNegative = Range(0)  # >= 0
AtLeastOne = Range(1)  # counts that must not be empty
Fraction = Range(0, 1)  # [0, 1]
Decay = Range(0, 1, high_open=True)  # [0, 1): EMA decays, betas


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = get_args(tp)
        value = _convert(value, base, where)
        for extra in extras:
            if isinstance(extra, Range) and value is not None and not extra.contains(value):
                raise ConfigError(f"{where}: {value!r} is out of range, must be {extra}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(c) for c in get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad values raise ``ConfigError``."""
    name = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{name}: unknown key {unknown[0]!r} (known keys: {known})")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}" if where else key)
    try:
        instance = cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: {error}") from error
    return instance


def to_dict(config: Any) -> dict:
    """A dataclass as plain data (tuples become lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    return key.split("."), yaml.safe_load(raw)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set nested keys of plain config data from ``key.sub=value`` strings."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return data


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of a packaged config (``vae-tiny`` -> configs/vae-tiny.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = CONFIG_DIR / name
    if packaged.is_file():
        return packaged
    names = packaged_configs()
    close = difflib.get_close_matches(path.stem, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"config {str(name_or_path)!r}: no such file, and no packaged config by that name "
                      f"(packaged: {', '.join(names)}){hint}")


def packaged_configs() -> list[str]:
    """Names of the configs that ship with the package (``--config NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path}: not valid YAML ({error})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    return data


def load_config(cls: type[T], file: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Read ``file`` (a path or packaged name; None = defaults), apply overrides, validate."""
    data = read_yaml(resolve_config_path(file)) if file is not None else {}
    data = apply_overrides(data, list(overrides))
    where = Path(file).stem if file is not None else ""
    return from_dict(cls, data, where)
