"""Service configuration: one definition drives the TOML file's validation, the defaults and
the command line's flags with their `--help`.

A service's config is a dataclass whose fields carry `setting(...)` metadata: the help text
and, where the TOML or flag value is not already the field's type, a parser. `load` reads a
TOML file (a `[table]` of the service's name, or top-level keys), refuses unknown keys and
bad values with a message naming the file, key and value, then applies the flags that were
given. `add_flags` puts every setting on an argparse parser as `--name-with-dashes` with its
help and default.

Every value is checked at load, from the file and from a flag alike: numbers must be finite
(no `inf`, no `nan`) and within the setting's `min`/`max`, a text among its `choices`, and
a `check` function may refuse anything else; a refusal is a ConfigError of one line naming
the key, the value and the range, never a traceback later in the service.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from meterledger.errors import ConfigError

T = TypeVar("T")
_PARSE, _HELP, _META = "meterledger.parse", "meterledger.help", "meterledger.metavar"
_MIN, _MAX, _CHOICES, _CHECK = ("meterledger.min", "meterledger.max", "meterledger.choices",
                                "meterledger.check")


def setting(default: Any = dataclasses.MISSING, *, help: str,
            parse: Callable[[Any], Any] | None = None,
            default_factory: Callable[[], Any] | None = None, metavar: str | None = None,
            min: float | None = None, max: float | None = None,
            choices: tuple[str, ...] | None = None,
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A config field: its default, its help, how a TOML or flag value becomes it, and its
    range: `min`/`max` for numbers (inclusive), `choices` for a text, `check` returning what
    is wrong with a value (or None)."""
    meta = {_HELP: help, _PARSE: parse, _META: metavar, _MIN: min, _MAX: max,
            _CHOICES: choices, _CHECK: check}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _settings(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if _HELP in f.metadata]


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _path(v: Any) -> Path:
    if isinstance(v, Path):
        return v
    return Path(_str(v))


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
        return v.lower() in ("true", "1", "yes")  # a flag's text
    raise ValueError(f"expected true or false, got {v!r}")


_BUILTIN: dict[str, Callable[[Any], Any]] = {"str": _str, "int": int, "float": float,
                                             "Path": _path, "bool": _bool}


def _parser(f: dataclasses.Field[Any]) -> Callable[[Any], Any]:
    parse = f.metadata.get(_PARSE)
    if parse is not None:
        return parse  # type: ignore[no-any-return]
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    fn = _BUILTIN.get(name)
    if fn is None:
        raise TypeError(f"setting {f.name} of type {name!r} needs parse=")
    if fn is int:
        return _int
    if fn is float:
        return _float
    return fn


def range_error(f: dataclasses.Field[Any], value: Any) -> str | None:
    """What is wrong with `value` for the setting `f` (None if nothing): a number that is not
    finite or is outside [min, max], a text not among the choices, the setting's own check."""
    meta = f.metadata
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    lo, hi = meta.get(_MIN), meta.get(_MAX)
    if isinstance(value, int | float) and not isinstance(value, bool) and (
            (lo is not None and value < lo) or (hi is not None and value > hi)):
        return f"{value!r} is outside [{_num(lo)}, {_num(hi)}]"
    choices = meta.get(_CHOICES)
    if choices is not None and value not in choices:
        return f"{value!r} is not one of {', '.join(choices)}"
    check = meta.get(_CHECK)
    return check(value) if check is not None else None


def _num(v: float | None) -> str:
    if v is None:
        return "..."
    return str(int(v)) if float(v).is_integer() else str(v)


def _checked(f: dataclasses.Field[Any]) -> Callable[[Any], Any]:
    """The setting's parser followed by its range check (ValueError saying what is wrong)."""
    parse = _parser(f)

    def parse_and_check(v: Any) -> Any:
        value = parse(v)
        err = range_error(f, value)
        if err is not None:
            raise ValueError(err)
        return value

    return parse_and_check


def _flag(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    """The checked parser as argparse wants it: its message becomes the usage error."""
    parse = _checked(f)

    def flag(text: str) -> Any:
        try:
            return parse(text)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    flag.__name__ = f.name
    return flag


def _int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"expected an integer, got {v!r}")
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


_MAX_NESTING = 32  # brackets and braces open at once; real configs need 3


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at `path`; ConfigError (one line) for anything that is not one: a
    missing file, bytes that are not UTF-8, a syntax error, nesting deeper than any config
    needs (tomllib recurses), an integer too long to convert."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path}: not UTF-8 text (byte {e.start})") from None
    depth = deepest = 0
    for ch in text:  # an upper bound: brackets inside strings count too
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    if deepest > _MAX_NESTING:
        raise ConfigError(f"config {path}: nested more than {_MAX_NESTING} deep")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path}: {e}") from None
    except ValueError as e:  # e.g. an integer beyond Python's conversion limit
        raise ConfigError(f"config {path}: {e}") from None


def load(cls: type[T], path: Path | None, table: str, overrides: Mapping[str, Any]) -> T:
    """`cls` from the TOML file at `path` (its [table] or top-level keys), then the flags
    given (None values are flags not given). Raises ConfigError naming what was wrong."""
    fields = {f.name: f for f in _settings(cls)}
    values: dict[str, Any] = {}
    if path is not None:
        doc = _read_toml(path)
        doc = doc.get(table, doc)
        if not isinstance(doc, dict):
            raise ConfigError(f"config {path}: {table} must be a table ([{table}]), not "
                              f"{type(doc).__name__}")
        for key, value in doc.items():
            f = fields.get(key)
            if f is None:
                raise ConfigError(f"config {path}: unknown key {key!r} "
                                  f"(known: {', '.join(fields)})")
            try:
                values[key] = _checked(f)(value)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"config {path}: {key}: {e}") from None
    for key, value in overrides.items():
        if value is None:
            continue
        f = fields.get(key)
        err = range_error(f, value) if f is not None else None
        if err is not None:  # flags went through _checked already; this is for callers
            raise ConfigError(f"--{key.replace('_', '-')}: {err}")
        values[key] = value
    return cls(**values)


def add_flags(parser: argparse.ArgumentParser, cls: type[Any],
              skip: tuple[str, ...] = ()) -> None:
    """Every setting of `cls` as a flag with its help and default (flags default to None, so
    `load` can tell a flag given from one left out)."""
    for f in _settings(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = "" if default in ("", [], None) else f" (default: {default})"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_flag(f),
                            default=None, metavar=f.metadata.get(_META),
                            help=f.metadata[_HELP] + shown)


def flag_values(args: argparse.Namespace, cls: type[Any]) -> dict[str, Any]:
    """The setting flags of a parsed command line (None where a flag was not given)."""
    return {f.name: getattr(args, f.name, None) for f in _settings(cls)}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def _range_text(f: dataclasses.Field[Any]) -> str:
    meta = f.metadata
    lo, hi, choices = meta.get(_MIN), meta.get(_MAX), meta.get(_CHOICES)
    if choices is not None:
        return f"one of {', '.join(choices)}"
    if lo is not None or hi is not None:
        return f"{_num(lo)}..{_num(hi)}"
    return ""


def example(cls: type[Any], table: str, header: str) -> str:
    """A commented TOML file of every setting of `cls` at its default, from the same
    definitions as the flags and the checks: what docs/examples/*.toml hold (tools.examples
    writes them; a test keeps them equal to this)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()] + ["", f"[{table}]"]
    for f in _settings(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        text = f.metadata[_HELP]
        rng = _range_text(f)
        lines.append(f"# {text}" + (f" ({rng})" if rng else ""))
        try:
            value = _toml_value(default)
        except TypeError:  # a structured setting (feeders): an empty list of it
            value = "[]"
        lines.append(f"{f.name} = {value}")
    return "\n".join(lines) + "\n"
