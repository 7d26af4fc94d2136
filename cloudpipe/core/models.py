"""Pydantic models of cloudpipe's JSON files, and the one line a bad file is reported as.

A field says what it must be in its ``description`` (e.g. ``"must be a whole number >= 1"``);
:func:`error_line` turns the first error of a :class:`~pydantic.ValidationError` into
``what: field.path: must be ..., got <value>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from cloudpipe.core.errors import CloudpipeError

M = TypeVar("M", bound=BaseModel)
SHOWN = 80
"""The most characters of a bad value an error line quotes."""


class FileModel(BaseModel):
    """A JSON object read strictly (``"false"`` is no bool, ``True`` no int, a string no list),
    keys it does not name allowed (tuned files record more than their readers need)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


def per_class(name: str, classes: Sequence[str], value: Any, description: str) -> type[FileModel]:
    """A model of ``{class: value}`` with every class of ``classes`` required."""
    return create_model(name, __base__=FileModel, **{c: (value, Field(description=description)) for c in classes})


def error_line(what: str, err: ValidationError, model: type[BaseModel] | None = None, rule: str | None = None) -> str:
    """``err``'s first error as one line: ``what: the.field: what it must be, got <value>``.

    What it must be is the message of a validator that refused the value, else the
    ``description`` of the deepest field of ``model`` on the error's path, else ``rule``, else
    pydantic's own words.
    """
    first = err.errors(include_url=False)[0]
    loc = ".".join(map(str, first["loc"]))
    if first["type"] == "union_tag_invalid":  # a tagged entry of an unknown kind: the tag is the wrong value
        loc += "." + first["ctx"]["discriminator"].strip("'")
        rule, first["input"] = f"must be one of {first['ctx']['expected_tags']}", first["ctx"]["tag"]
    elif first["type"] == "value_error":
        rule = str(first["ctx"]["error"])
    else:
        rule = (model and _description(model, first["loc"])) or rule or (
            "must be a JSON object" if first["type"] == "model_type" else first["msg"][:1].lower() + first["msg"][1:])
    where = f"{what}: {loc}" if loc else what
    if not loc and first["type"] == "value_error":  # the model's own check of several fields: no one value to quote
        return f"{where}: {rule}"
    if first["type"] == "missing":
        return f"{where}: missing ({rule})"
    shown = repr(first["input"])
    return f"{where}: {rule}, got {shown if len(shown) <= SHOWN else shown[:SHOWN] + '...'}"


def _description(model: type[BaseModel], loc: tuple) -> str | None:
    """The description of the deepest field on the path ``loc`` that has one, going through
    lists (an index) and tagged unions (the tag) as pydantic's error paths do."""
    found, current = None, model
    for part in loc:
        while get_origin(current) is Annotated:
            current = get_args(current)[0]
        members = get_args(current) if get_origin(current) in (Union, UnionType) else ()
        if members and not isinstance(part, int):  # a tagged union: the part is the tag of the member
            current = next((m for m in members if _is_model(m) and any(
                part in get_args(f.annotation) for f in m.model_fields.values())), None)
            continue
        if members:  # an optional list: the list
            current = next((m for m in members if get_origin(m) in (list, tuple)), None)
        if _is_model(current) and part in current.model_fields:
            field = current.model_fields[part]
            found, current = field.description or found, field.annotation
        elif isinstance(part, int) and get_origin(current) in (list, tuple):
            current = get_args(current)[0]
        else:
            break
    return found


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def read_model(model: type[M], data: object, what: str, *, path: str | Path | None = None,
               context: dict | None = None) -> M:
    """``data`` (a parsed JSON value) as ``model``.

    Raises:
        CloudpipeError: one line naming ``path`` and the first wrong field (:func:`error_line`).
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        raise CloudpipeError(error_line(what, err, model), path=path) from None
