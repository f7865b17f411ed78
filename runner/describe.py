"""What an option accepts, in words (``an integer >= 1``, ``one of a, b``, ``a list of (...)``):
read from a pydantic field's annotation and constraints. The config checks' messages and the
generated option tables (``docs/options.md``) both say it this way."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo


def field_annotation(field: FieldInfo) -> Any:
    ann = field.annotation
    return typing.Annotated[(ann, *field.metadata)] if field.metadata else ann


def unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """(the type, its constraints) of ``Annotated[...]``."""
    meta: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *more = typing.get_args(annotation)
        for m in more:
            meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
    return annotation, meta


def item_type(annotation: Any) -> Any:
    base, _ = unwrap(annotation)
    base = non_null(base)
    args = typing.get_args(base)
    return args[0] if args else Any


def non_null(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def describe(annotation: Any) -> str:
    """What a field accepts, in words: ``an integer >= 1``, ``one of a, b`` ... (or null)."""
    base, meta = unwrap(annotation)
    for m in meta:
        if isinstance(m, Described):
            return m.text
    origin = typing.get_origin(base)
    if origin in (Union, types.UnionType):
        return _union(base, meta)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(base))
    if origin in (list, tuple):
        return _sequence(base, meta)
    return _scalar(base, meta)


def _union(base: Any, meta: list[Any]) -> str:
    args = typing.get_args(base)
    parts = [
        describe(typing.Annotated[(a, *meta)] if meta else a) for a in args if a is not type(None)
    ]
    return ", or ".join(parts) + (" or null" if type(None) in args else "")


def _sequence(base: Any, meta: list[Any]) -> str:
    item = describe(item_type(base)).removeprefix("a ").removeprefix("an ")
    nonempty = any(isinstance(m, at.MinLen) and m.min_length > 0 for m in meta)
    return ("a non-empty list" if nonempty else "a list") + f" of ({item})"


def _scalar(base: Any, meta: list[Any]) -> str:
    if base is bool:
        return "true or false"
    if base in (int, float):
        return ("an integer" if base is int else "a number") + _bounds(meta)
    if base is str:
        return "a non-empty string" if any(isinstance(m, at.MinLen) for m in meta) else "a string"
    if typing.get_origin(base) in (dict, Mapping) or base is dict:
        return "a mapping"
    if isinstance(base, type) and issubclass(base, BaseModel):
        return "{" + ", ".join(base.model_fields) + "}"
    return "a value" if base is Any else getattr(base, "__name__", str(base))


def _bounds(meta: list[Any]) -> str:
    lo = next((m for m in meta if isinstance(m, (at.Ge, at.Gt))), None)
    hi = next((m for m in meta if isinstance(m, (at.Le, at.Lt))), None)
    lo_v = None if lo is None else getattr(lo, "ge", getattr(lo, "gt", None))
    hi_v = None if hi is None else getattr(hi, "le", getattr(hi, "lt", None))
    if lo is not None and hi is not None:
        return (
            f" in {'[' if isinstance(lo, at.Ge) else '('}{lo_v:g}, "
            f"{hi_v:g}{']' if isinstance(hi, at.Le) else ')'}"
        )
    if lo is not None:
        return f" {'>=' if isinstance(lo, at.Ge) else '>'} {lo_v:g}"
    if hi is not None:
        return f" {'<=' if isinstance(hi, at.Le) else '<'} {hi_v:g}"
    return ""


class Described:
    """``Annotated[int, Described("an integer 6n+2")]``: the words :func:`describe` gives."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Described({self.text!r})"
