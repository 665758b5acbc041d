"""Conventions for catalog ``metadata`` (profile.md "Service Metadata").

The spec keeps ``metadata`` opaque; the profile RECOMMENDS field names that help platforms show
a catalog: display names, images, documentation links, plan bullets and costs. These models read
those conventions when a broker follows them. Since nothing obliges a broker to, the accessors
``Service.display_metadata()`` / ``Plan.display_metadata()`` answer ``None`` for metadata that
does not follow them instead of failing the whole catalog.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import Field, ValidationError

from servicebay.osb._wire import Id, Str, WireModel

__all__ = ["Cost", "PlanMetadata", "ServiceMetadata", "read_metadata"]

T = TypeVar("T", bound=WireModel)


class ServiceMetadata(WireModel):
    """Service metadata fields the profile recommends."""

    display_name: Str | None = Field(default=None, alias="displayName")
    image_url: Str | None = Field(default=None, alias="imageUrl")
    long_description: Str | None = Field(default=None, alias="longDescription")
    provider_display_name: Str | None = Field(default=None, alias="providerDisplayName")
    documentation_url: Str | None = Field(default=None, alias="documentationUrl")
    support_url: Str | None = Field(default=None, alias="supportUrl")


class Cost(WireModel):
    """Cost Object: amounts per currency code, and the unit billed (e.g. ``MONTHLY``)."""

    amount: dict[str, float]
    unit: Id


class PlanMetadata(WireModel):
    """Plan metadata fields the profile recommends."""

    bullets: list[Str] | None = None
    costs: list[Cost] | None = None
    display_name: Str | None = Field(default=None, alias="displayName")


def read_metadata(model: type[T], metadata: dict[str, Any] | None) -> T | None:
    """``metadata`` read as ``model``, or None when it does not follow the convention."""
    try:
        return model.model_validate(metadata or {})
    except ValidationError:
        return None
