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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator, create_model

from cloudpipe.core.errors import CloudpipeError

M = TypeVar("M", bound=BaseModel)
SHOWN = 80
"""The most characters of a bad value an error line quotes."""


class FileModel(BaseModel):
    """A JSON object read strictly (``"false"`` is no bool, ``True`` no int, a string no list),
    keys it does not name allowed (tuned files record more than their readers need)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


def _whole_kept(value: Any, check: Any) -> Any:
    checked = check(value)
    return value if type(value) is int else checked


WHOLE_KEPT = WrapValidator(_whole_kept)
"""On a float field: a whole number that passes the field's checks stays an ``int``, so a file
is written back as it was given (``500``, not ``500.0``)."""


def per_class(name: str, classes: Sequence[str], value: Any, description: str,
              base: type[FileModel] = FileModel) -> type[FileModel]:
    """A model of ``{class: value}`` with every class of ``classes`` required (after ``base``'s fields)."""
    return create_model(name, __base__=base, **{c: (value, Field(description=description)) for c in classes})


def dump_model(model: type[M], values: dict, what: str, context: dict | None = None) -> dict:
    """``values`` as a writer saves them: checked by the ``model`` its reader uses (so nothing is
    written that the reader would refuse, and no key the model does not name), in the model's
    field order, fields not given left out.

    Raises:
        CloudpipeError: a value the model refuses (:func:`error_line`).
        TypeError: a key the model does not name (a writer's bug).
    """
    file = read_model(model, values, what, context=context)
    if file.model_extra:
        raise TypeError(f"{model.__name__} names no {', '.join(file.model_extra)}")
    return file.model_dump(exclude_unset=True)


def cut(text: str) -> str:
    """``text`` as an error line quotes it: at most :data:`SHOWN` characters, cut with ``...``."""
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def shown(value: Any) -> str:
    """``repr(value)``, :func:`cut`."""
    return cut(repr(value))


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
        own = {"model_type": "must be a JSON object",
               "literal_error": f"must be one of {first.get('ctx', {}).get('expected')}"}.get(first["type"])
        rule = (model and _description(model, first["loc"])) or rule or own or first["msg"][:1].lower() + first["msg"][1:]
    where = f"{what}: {loc}" if loc else what
    if not loc and first["type"] == "value_error":  # the model's own check of several fields: no one value to quote
        return f"{where}: {rule}"
    if first["type"] == "missing":
        return f"{where}: missing ({rule})"
    return f"{where}: {rule}, got {shown(first['input'])}"


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
    """``data`` (a parsed JSON value) as ``model``, or a CloudpipeError naming ``path`` and the
    first wrong field (:func:`error_line`)."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        raise CloudpipeError(error_line(what, err, model), path=path) from None
