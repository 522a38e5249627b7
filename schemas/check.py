"""The rules of :mod:`mes.schemas.events`, as TypedDicts: what the worker validates with.

The models in ``events`` are the contract's documentation and the source of the exported
JSON Schema files. Checking an event with them builds a model object for every message
and choice, which the worker then throws away (it stores the event's dict as sent). The
same rules as TypedDicts build plain dicts instead and check an event in about two thirds
of the time (``bench/decode.py``: 6.6 against 10.5 µs for a typical event).

The TypedDicts are derived from the models here, field by field (type, constraints,
required or not, open or closed object), so there is one definition of the contract;
``tests/test_schemas.py`` checks that the JSON Schema of both is the same.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, NotRequired, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict

from mes.schemas.events import Event

__all__ = ["EVENT_CHECK", "typed_dict_of"]

_DERIVED: dict[type[BaseModel], Any] = {}


def typed_dict_of(model: type[BaseModel]) -> Any:
    """A TypedDict that checks what ``model`` checks (its nested models derived too)."""
    if model not in _DERIVED:
        fields = {}
        for name, field in model.model_fields.items():
            annotation = _derive(field.annotation)
            if field.metadata:
                annotation = Annotated[(annotation, *field.metadata)]
            fields[name] = annotation if field.is_required() else NotRequired[annotation]
        derived = TypedDict(model.__name__, fields)  # type: ignore[misc]  # typing: TypedDict's functional form, a run-time name
        derived.__pydantic_config__ = dict(model.model_config)  # type: ignore[attr-defined]  # pydantic reads it off the class
        _DERIVED[model] = derived
    return _DERIVED[model]


def _derive(annotation: Any) -> Any:
    """``annotation`` with every model in it replaced by its TypedDict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return typed_dict_of(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return Annotated[(_derive(args[0]), *annotation.__metadata__)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_derive(a) for a in args)]  # noqa: UP007 - built from a tuple
    if origin in (list, dict):
        return origin[tuple(_derive(a) for a in args)]
    return annotation  # int, str, bool, Any, Literal[...]


EVENT_CHECK: TypeAdapter[Any] = TypeAdapter(_derive(Event))
