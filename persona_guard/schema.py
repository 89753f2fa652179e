"""One schema for the library, YAML recipes and the command line: typed, range-checked dataclass fields.

A config dataclass declares each option once: its type annotation, its default and, in the field's
metadata (:func:`bounds`), its allowed range. :func:`check` enforces them when the library builds
one (config dataclasses call it from ``__post_init__``); :func:`from_mapping` builds one from a YAML
section or ``--section.key=value`` overrides, rejecting unknown keys by name, the pattern of
``transformers.HfArgumentParser`` / TRL's ``TrlParser`` (dataclasses as the single source of
options), plus ranges. Every error is one :class:`~persona_guard.errors.PersonaGuardError` line
naming the key.

Types understood: ``bool``, ``int`` (not bool), ``float`` (finite; ints accepted), ``str``,
``None``, ``Literal[...]``, unions, ``Enum`` types (member or value), ``tuple[X, ...]`` /
``list[X]`` (a YAML list; read as a tuple), ``dict[K, V]`` and nested config dataclasses (a YAML
mapping). Other annotations accept any value.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from persona_guard.errors import PersonaGuardError

T = TypeVar("T")

#: field metadata key of fields the library sets itself (not settable from YAML or flags)
INTERNAL = "internal"


class FieldError(PersonaGuardError):
    """A value of the wrong type or out of range; ``key`` is the dotted field name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def bounds(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: tuple[str, ...] | None = None,
           help: str | None = None) -> dict[str, Any]:  # noqa: A002 (argparse's name)
    """Field metadata: a numeric range (``ge``/``gt``/``le``/``lt``), the allowed ``choices`` of a string
    field and the ``help`` text of its command-line flag, e.g.
    ``field(default=1, metadata=bounds(ge=1, help="answers per question"))``."""
    given = (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices), ("help", help))
    return {name: value for name, value in given if value is not None}


def internal() -> dict[str, bool]:
    """Field metadata of a field the library sets itself (rejected in YAML and flags)."""
    return {INTERNAL: True}


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(annotation)
    return (annotation,)


def describe(annotation: Any) -> str:
    """Human words for a type annotation, as used in error messages and ``--help``."""
    members = _members(annotation)
    if len(members) > 1:
        return " or ".join(describe(member) for member in members)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true/false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a finite number"
    if annotation is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    if origin in (tuple, list):
        inner = describe(args[0]) if args else ""
        if not inner.startswith(("a ", "an ")) or " or " in inner:
            return "a list"
        return "a list of " + inner.split(" ", 1)[1] + "s"
    if origin is dict or annotation is dict:
        return "a mapping"
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _accepts(annotation: Any, value: Any) -> bool:
    members = _members(annotation)
    if len(members) > 1:
        return any(_accepts(member, value) for member in members)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return True
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or any(value == member.value for member in annotation)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_accepts(a, v) for a, v in zip(args, value))
        return not args or all(_accepts(args[0], item) for item in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(_accepts(args[0], k) and _accepts(args[1], v) for k, v in value.items())
    if annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


_COMPARISONS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
                "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def check_value(key: str, annotation: Any, value: Any, limits: Mapping[str, Any] = {}) -> None:  # noqa: B006
    """Raise :class:`FieldError` unless ``value`` fits ``annotation`` and ``limits`` (field metadata, see
    :func:`bounds`); ranges apply to a number and to each number of a list, ``choices`` to a string."""
    if not _accepts(annotation, value):
        raise FieldError(key, f"expected {describe(annotation)}, got {value!r}")
    choices = limits.get("choices")
    if choices is not None and isinstance(value, str) and value not in choices:
        raise FieldError(key, f"expected one of {', '.join(choices)}, got {value!r}")
    numbers = value if isinstance(value, (tuple, list)) else [value]
    for number in numbers:
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        for name, bound in limits.items():
            if name in _COMPARISONS and not _COMPARISONS[name][0](number, bound):
                raise FieldError(key, f"must be {_COMPARISONS[name][1]} {bound:g}, got {number!r}")


def check(instance: Any) -> None:
    """Check every field of a config dataclass instance against its annotation and bounds."""
    hints = _hints(type(instance))
    for item in dataclasses.fields(instance):
        check_value(item.name, hints[item.name], getattr(instance, item.name), item.metadata)


def settable_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of ``cls`` a YAML section or flag may set."""
    return {item.name: item for item in dataclasses.fields(cls) if not item.metadata.get(INTERNAL)}


def _nested_class(annotation: Any) -> type | None:
    found = [member for member in _members(annotation)
             if isinstance(member, type) and dataclasses.is_dataclass(member)]
    return found[0] if found else None


def from_mapping(cls: type[T], values: Any, where: str, section: str) -> T:
    """Build ``cls`` from a YAML mapping: unknown keys rejected by name, lists read as tuples,
    nested config dataclasses from nested mappings, every value checked (:func:`check`).

    Errors: one ``PersonaGuardError`` line ``"<where>: <section>.<key>: <what is wrong>"``."""
    if not isinstance(values, dict):
        raise PersonaGuardError(f"{where}: {section}: expected a mapping, got {type(values).__name__}")
    known = settable_fields(cls)
    unknown = sorted(str(key) for key in set(values) - set(known))
    if unknown:
        raise PersonaGuardError(
            f"{where}: {section}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = _hints(cls)
    converted = {}
    for key, value in values.items():
        nested = _nested_class(hints[key])
        if nested is not None and isinstance(value, dict):
            value = from_mapping(nested, value, where, f"{section}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        converted[key] = value
    try:
        return cls(**converted)
    except FieldError as error:
        raise PersonaGuardError(f"{where}: {section}.{error.key}: {error.message}") from None
    except PersonaGuardError as error:
        raise PersonaGuardError(f"{where}: {section}: {error}") from None


def to_mapping(instance: Any) -> dict[str, Any]:
    """The settable fields of a config dataclass as plain YAML data (tuples as lists, nested configs as
    mappings): what :func:`from_mapping` reads back into an equal instance."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return to_mapping(value)
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value.value if isinstance(value, enum.Enum) else value

    return {name: plain(getattr(instance, name)) for name in settable_fields(type(instance))}


def range_text(limits: Mapping[str, Any]) -> str:
    """``>= 1, <= 100`` for the range in field metadata (:func:`bounds`); empty when unbounded."""
    return ", ".join(f"{_COMPARISONS[key][1]} {bound:g}" for key, bound in limits.items() if key in _COMPARISONS)


def _flag_text(value: Any) -> Any:
    """A default as a user would type it (``8,12`` for a tuple)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def add_arguments(parser: Any, cls: type, flags: Mapping[str, str], helps: Mapping[str, str] | None = None, *,
                  optional: bool = False) -> None:
    """One command-line flag per field of ``cls`` named in ``flags`` (field -> ``--flag``), with the
    field's default, help (``helps`` wins over the field's ``help`` metadata), choices (``Literal`` or
    ``choices`` metadata) and a ``type`` that converts the text and checks it with :func:`check_value`,
    so a bad value is argparse's one-line error naming the flag. ``bool`` fields become switches;
    ``tuple[X, ...]`` fields take comma-separated values. ``optional``: a flag not given is absent from
    :func:`values_from_args` (for callers whose defaults differ from the field's, e.g. a preset).
    Read the values back with :func:`values_from_args`."""
    import argparse

    hints = _hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    for name, flag in flags.items():
        item, annotation = fields[name], hints[name]
        default = item.default if item.default is not dataclasses.MISSING else None
        text = (helps or {}).get(name) or item.metadata.get("help", "")
        shown = argparse.SUPPRESS if optional else default
        if annotation is bool:
            parser.add_argument(flag, action="store_true", default=shown, help=text)
            continue
        literal = [m for m in _members(annotation) if typing.get_origin(m) is typing.Literal]
        choices = typing.get_args(literal[0]) if literal else item.metadata.get("choices")
        if choices:
            parser.add_argument(flag, choices=choices, default=shown, help=f"{text} (default {default})".strip())
            continue
        limits = range_text(item.metadata)
        typed = [m for m in _members(annotation) if m is not type(None)]  # None: the flag left out
        parser.add_argument(flag, type=flag_type(name, annotation, item.metadata), default=shown,
                            help=f"{text} ({' or '.join(map(describe, typed))}{', ' + limits if limits else ''}"
                                 f", default {_flag_text(default)})".strip())


def flag_type(name: str, annotation: Any, limits: Mapping[str, Any] = {}) -> Any:  # noqa: B006
    """argparse ``type=``: converts the text to ``annotation`` (``int``, ``float``, ``str``, optional
    ones, ``tuple[X, ...]`` from ``a,b,c``) and checks it with :func:`check_value` and ``limits``
    (:func:`bounds`); a bad value raises ``ArgumentTypeError``, which argparse prints naming the flag.
    Also for flags that set no library field, e.g. ``flag_type("port", int, bounds(ge=0, le=65535))``."""
    import argparse

    members = [m for m in _members(annotation) if m is not type(None)]
    sequence = [m for m in members if typing.get_origin(m) in (tuple, list)]
    item = typing.get_args(sequence[0])[0] if sequence else None
    kinds = [m for m in (item, *members) if m in (int, float)]
    kind = kinds[0] if kinds else str

    def convert(text: str) -> Any:
        try:
            value: Any = kind(text) if not sequence else tuple(
                kind(part) for part in text.split(",") if part.strip())
            if not _accepts(annotation, value):  # e.g. nan: quote the text as typed
                raise ValueError(text)
            check_value(name, annotation, value, limits)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {describe(annotation)}, got {text!r}") from None
        except FieldError as error:
            raise argparse.ArgumentTypeError(error.message) from None
        return value

    convert.__name__ = describe(annotation)
    return convert


def values_from_args(args: Any, flags: Mapping[str, str]) -> dict[str, Any]:
    """``{field: value}`` of the flags :func:`add_arguments` added (argparse's ``dest`` of each flag);
    an ``optional`` flag that was not given is left out."""
    dests = {name: flag.lstrip("-").replace("-", "_") for name, flag in flags.items()}
    return {name: getattr(args, dest) for name, dest in dests.items() if hasattr(args, dest)}


def from_args(cls: type[T], args: Any, flags: Mapping[str, str], *, nested: Mapping[str, str] | None = None,
              **fixed: Any) -> T:
    """``cls(**values_from_args(args, flags), **fixed)``: a cross-field error of ``cls``'s
    ``__post_init__`` (a :class:`FieldError`) becomes one line naming the flag instead of the field;
    ``nested``: the flags of dotted keys of sections passed in ``fixed`` (``{"policy.top_k": "--top-k"}``)."""
    try:
        return cls(**values_from_args(args, flags), **fixed)
    except FieldError as error:
        flag = {**flags, **(nested or {})}.get(error.key, error.key)
        raise PersonaGuardError(f"{flag}: {error.message}") from None


def field_lines(cls: type, prefix: str) -> list[str]:
    """``--prefix.key`` (type, default) for each settable field, nested sections expanded: for ``--help``."""
    hints = _hints(cls)
    lines = []
    for name, item in settable_fields(cls).items():
        nested = _nested_class(hints[name])
        if nested is not None:
            lines += field_lines(nested, f"{prefix}.{name}")
            continue
        default = item.default if item.default is not dataclasses.MISSING else (
            item.default_factory() if item.default_factory is not dataclasses.MISSING else "required")
        limits = range_text(item.metadata)
        lines.append(f"--{prefix}.{name}: {describe(hints[name])}{', ' + limits if limits else ''} "
                     f"(default {default!r})")
    return lines
