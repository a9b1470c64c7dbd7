"""Command-line options declared on the config dataclass itself.

A field declared as ``field(default=..., metadata=option("--flag", "help", ...))`` carries
its flag, help and conversions with it; ``add_options`` turns the fields into argparse
flags and ``from_args`` turns the parsed flags back into the dataclass. The options are
thus written once, on the dataclass, not again in the parser and again where the parsed
flags become a config (uvicorn's habit, which lets the three drift apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")

_METADATA_KEY = "inferd.option"


def _same(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Conversion:
    """Between a flag's value as argparse gives it and the field's value."""

    to_config: Callable[[Any], Any] = _same
    to_cli: Callable[[Any], Any] = _same  # for the default argparse shows and starts from


SAME = Conversion()
NOT = Conversion(operator.not_, operator.not_)  # --no-X switches a True field off
TUPLE = Conversion(tuple, list)  # a repeated flag's values
MIB = Conversion(lambda mib: mib * 2**20, lambda size: size // 2**20)  # MiB on the CLI
NEGATIVE_IS_NONE = Conversion(
    lambda value: None if value < 0 else value, lambda value: -1 if value is None else value
)


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """How one config field appears on the command line."""

    flag: str
    help: str  # may show the default as %(default)s, in the CLI's unit
    action: Literal["store", "store_true", "append"] = "store"
    type: Callable[[str], Any] | None = None  # text -> CLI value; None: the text itself
    metavar: str | None = None  # None: the flag's name, upper-cased, as argparse does
    choices: Sequence[str] | None = None
    convert: Conversion = SAME
    # A second switch that turns the field off (to None) whatever the first says.
    off_flag: str | None = None
    off_help: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class NotAnOption:
    """A field the command line does not set, and why."""

    reason: str


def option(
    flag: str,
    help: str,
    *,
    action: Literal["store", "store_true", "append"] = "store",
    type: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    convert: Conversion = SAME,
    off_flag: str | None = None,
    off_help: str = "",
) -> Mapping[str, Option]:
    """A field's metadata, ``field(default=..., metadata=option(...))``: its flag."""
    spec = Option(flag, help, action, type, metavar, choices, convert, off_flag, off_help)
    return {_METADATA_KEY: spec}


def not_an_option(reason: str) -> Mapping[str, NotAnOption]:
    """A field's metadata when no flag sets it; say who does."""
    return {_METADATA_KEY: NotAnOption(reason)}


def option_of(field: dataclasses.Field[Any]) -> Option | NotAnOption:
    """The field's flag, or why it has none; every field must say which."""
    spec = field.metadata.get(_METADATA_KEY)
    if not isinstance(spec, Option | NotAnOption):
        raise TypeError(
            f"config field '{field.name}' says nothing of the command line: give it "
            "metadata=option(...), or metadata=not_an_option(...) when no flag sets it"
        )
    return spec


def _options(cls: type) -> list[tuple[dataclasses.Field[Any], Option]]:
    found = [(field, option_of(field)) for field in dataclasses.fields(cls)]
    return [(field, spec) for field, spec in found if isinstance(spec, Option)]


def _off_dest(field: dataclasses.Field[Any]) -> str:
    return f"{field.name}.off"  # no field name has a dot: no clash


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per option field of the dataclass ``cls``, in field order."""
    for field, spec in _options(cls):
        settings: dict[str, Any] = {
            "dest": field.name,
            "action": spec.action,
            "default": spec.convert.to_cli(field.default),
            "help": spec.help,
        }
        if spec.action == "store_true" and settings["default"] is not False:
            raise TypeError(f"{spec.flag} is a switch, so it needs a field that it turns on")
        if spec.action != "store_true":
            settings["type"] = spec.type
            settings["choices"] = spec.choices
            # Named after the flag, not the field: --max-message-size shows BYTES or
            # MAX_MESSAGE_SIZE, never the field's MAX_MESSAGE_BYTES. Choices show as such.
            if spec.metavar is not None or spec.choices is None:
                name = spec.flag.removeprefix("--").replace("-", "_").upper()
                settings["metavar"] = spec.metavar or name
        parser.add_argument(spec.flag, **settings)
        if spec.off_flag is not None:
            parser.add_argument(
                spec.off_flag, dest=_off_dest(field), action="store_true", help=spec.off_help
            )


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass ``cls`` as the flags ``add_options`` added were given."""
    values = {}
    for field, spec in _options(cls):
        value = spec.convert.to_config(getattr(args, field.name))
        if spec.off_flag is not None and getattr(args, _off_dest(field)):
            value = None
        values[field.name] = value
    return cls(**values)
