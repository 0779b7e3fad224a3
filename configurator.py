"""
nanoGPT's configuration habit, validated once at the edge:

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

Each argument without a leading `--` is a Python config file whose top-level assignments override the defaults;
each `--key=value` then overrides one key, the value read as a Python literal (bare words are strings). Keys and
types are checked against the typed dataclasses that the script hands inward, so a typo or a wrong type stops the run
with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A user's configuration mistake: scripts print its one-line message and exit with status 2."""


def configure(argv: list[str], *defaults: Any) -> list[Any]:
    """Apply config files and --key=value overrides in argv to copies of the dataclass instances in `defaults`.
    A key goes to whichever dataclass declares it (the first one if several do)."""
    owners: dict[str, int] = {}
    hints: list[dict[str, Any]] = []
    for i, d in enumerate(defaults):
        hints.append(typing.get_type_hints(type(d)))
        for f in dataclasses.fields(d):
            owners.setdefault(f.name, i)
    values: list[dict[str, Any]] = [{} for _ in defaults]

    def assign(key: str, value: Any, where: str) -> None:
        if key not in owners:
            close = difflib.get_close_matches(key, list(owners), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}' in {where}{hint}")
        i = owners[key]
        values[i][key] = check_type(key, value, hints[i][key], where)

    for arg in argv:
        if not arg.startswith("--"):
            for key, value in read_config_file(arg).items():
                assign(key, value, arg)
            continue
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            raise ConfigError(f"argument '{arg}' must be --key=value or a config file path")
        value = parse_value(raw)
        hint = hints[owners[key]][key] if key in owners else Any
        if not _matches(value, hint)[0] and _matches(raw, hint)[0]:
            value = raw  # a string setting may look like a number: --out_dir=1e-3, --wandb_run_name=2024
        assign(key, value, arg)

    out = []
    for d, v in zip(defaults, values, strict=True):
        try:
            out.append(dataclasses.replace(d, **v))
        except (ValueError, TypeError) as e:  # a dataclass's own checks (__post_init__) on the combined values
            raise ConfigError(str(e)) from None
    return out


def read_config_file(path: str) -> dict[str, Any]:
    """The top-level assignments of a Python config file (names starting with '_' and imports are skipped)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' not found (pass a path such as config/train_shakespeare_char.py)")
    with open(path) as f:
        source = f.read()
    namespace: dict[str, Any] = {}
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:
        raise ConfigError(f"config file '{path}' failed to run: {type(e).__name__}: {e}") from None
    return {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and not isinstance(v, types.ModuleType | types.FunctionType | type)
    }


def parse_value(raw: str) -> Any:
    """'3' -> 3, '1e-3' -> 0.001, 'True' -> True, '[2, 4]' -> [2, 4], 'None' -> None; anything else is a string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def check_type(key: str, value: Any, hint: Any, where: str) -> Any:
    """Return value as the declared type (int -> float and item -> [item] for a list are the only conversions) or
    raise a one-line ConfigError."""
    ok, converted = _matches(value, hint)
    if ok:
        return converted
    raise ConfigError(f"{key} = {value!r} in {where} has the wrong type: expected {_describe(hint)}")


def _matches(value: Any, hint: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _matches(value, a)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        return value in args, value
    if origin in (list, tuple):
        item = args[0] if args else Any
        if not isinstance(value, list | tuple):
            if origin is list:  # --seeds=1: one item stands for a list of one
                ok, v = _matches(value, item)
                return ok, [v] if ok else value
            return False, value
        checked = [_matches(v, item) for v in value]
        return all(ok for ok, _ in checked), origin(v for _, v in checked)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def explicit_keys(argv: list[str]) -> set[str]:
    """The keys argv sets, by config file or --key=value: what a user asked for, as opposed to a default."""
    keys: set[str] = set()
    for arg in argv:
        if arg.startswith("--"):
            keys.add(arg[2:].partition("=")[0])
        else:
            keys.update(read_config_file(arg))
    return keys
