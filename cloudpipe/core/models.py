"""Pydantic models of cloudpipe's JSON files, and the one line a bad file is reported as.

A field says what it must be in its ``description`` (e.g. ``"must be a whole number >= 1"``);
:func:`error_line` turns the first error of a :class:`~pydantic.ValidationError` into
``what: field.path: must be ..., got <value>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

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


def error_line(what: str, model: type[BaseModel], err: ValidationError) -> str:
    """``err``'s first error as one line: ``what: the.field: what it must be, got <value>``.

    The rule is the field's ``description`` (pydantic's own words where it has none), or the
    message of a validator that refused the value.
    """
    first = err.errors(include_url=False)[0]
    loc = ".".join(map(str, first["loc"]))
    if first["type"] == "value_error":
        rule = str(first["ctx"]["error"])
    else:
        rule = _description(model, first["loc"]) or ("must be a JSON object" if first["type"] == "model_type" else
                                                      first["msg"][:1].lower() + first["msg"][1:])
    where = f"{what}: {loc}" if loc else what
    if not loc and first["type"] == "value_error":  # the model's own check of several fields: no one value to quote
        return f"{where}: {rule}"
    if first["type"] == "missing":
        return f"{where}: missing ({rule})"
    shown = repr(first["input"])
    return f"{where}: {rule}, got {shown if len(shown) <= SHOWN else shown[:SHOWN] + '...'}"


def _description(model: type[BaseModel], loc: tuple) -> str | None:
    """The description of the deepest field of ``loc`` that has one."""
    found, current = None, model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            break
        found, current = field.description or found, field.annotation
    return found


def read_model(model: type[M], data: object, what: str, *, path: str | Path | None = None,
               context: dict | None = None) -> M:
    """``data`` (a parsed JSON value) as ``model``.

    Raises:
        CloudpipeError: one line naming ``path`` and the first wrong field (:func:`error_line`).
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        raise CloudpipeError(error_line(what, model, err), path=path) from None
