"""The base of every OSB model: how objects are read from and written to the wire.

Receivers MUST ignore unknown extension fields (spec "Vendor Extension Fields"), so every model
ignores extra keys. Primitive fields are strict: ``"true"`` is not a boolean and ``1`` is not a
string, because a broker must answer a wrongly typed field with 400 rather than guess.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Strict, StringConstraints

__all__ = ["Bool", "Id", "Int", "OptionalId", "Str", "WireModel"]

#: A string field; never coerced from another JSON type.
Str = Annotated[str, Strict()]
#: A string the spec says MUST be non-empty (ids, names, descriptions).
Id = Annotated[str, Strict(), StringConstraints(min_length=1)]
#: An optional field that, if present, MUST be a non-empty string.
OptionalId = Id | None
Bool = Annotated[bool, Strict()]
Int = Annotated[int, Strict()]


class WireModel(BaseModel):
    """A frozen OSB object: extension fields ignored, written back without null fields."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-ready body: field aliases, ``None`` fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> bytes:
        """Return the compact UTF-8 JSON body (the same content as ``to_wire()``)."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()
