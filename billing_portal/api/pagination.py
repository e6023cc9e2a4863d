"""Cursor pagination, the one way every list pages: ``limit`` and ``starting_after``,
newest first, answering ``{"data": [...], "has_more": bool}`` (Stripe's list shape).

A cursor is the id of the last item of the previous page, not an offset: items written
while a client pages through a list neither repeat nor go missing on the next page. The
page after the cursor is read with a keyset condition on (order field, pk), which an
index on the order field serves without counting the rows before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db.models import Model, Q, QuerySet
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from billing_portal.api.errors import ApiError
from billing_portal.api.fields import is_id

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

M = TypeVar("M", bound=Model)


class PageQuery(serializers.Serializer):
    """The query parameters every list takes; a list's own filters extend it."""

    limit = serializers.IntegerField(
        min_value=1,
        max_value=MAX_LIMIT,
        required=False,
        default=DEFAULT_LIMIT,
        help_text=f"How many items to answer, 1 to {MAX_LIMIT}; {DEFAULT_LIMIT} by default.",
        error_messages={
            "invalid": f"must be a whole number from 1 to {MAX_LIMIT}",
            "min_value": f"must be at least 1 (and at most {MAX_LIMIT})",
            "max_value": f"must be at most {MAX_LIMIT}; page through longer lists with "
            "starting_after",
        },
    )
    starting_after = serializers.CharField(
        required=False,
        max_length=255,
        help_text="The `id` of the last item of the previous page: the next page starts "
        "after it. Leave it out for the newest items.",
    )


@dataclass(frozen=True)
class Listing:
    """How one list is ordered and how its items are named: newest first by ``order``
    (ties broken by pk), each named by ``id_field``, the field its ``id`` shows."""

    noun: str
    order: str = "created_at"
    id_field: str = "pk"


@dataclass(frozen=True)
class Page(Generic[M]):
    items: list[M]
    has_more: bool


def paginate(
    items: QuerySet[M], *, within: QuerySet[M], listing: Listing, query: dict[str, Any]
) -> Page[M]:
    """One page of ``items`` for a validated ``PageQuery``.

    The cursor is looked up ``within`` the whole list before its filters: an item whose
    status changed since the previous page (an event rated meanwhile) still marks where
    that page ended.
    """
    limit: int = query["limit"]
    ordered = items.order_by(f"-{listing.order}", "-pk")
    starting_after = query.get("starting_after")
    if starting_after is not None:
        ordered = _after(ordered, _cursor(within, listing, starting_after), listing.order)
    found = list(ordered[: limit + 1])
    return Page(items=found[:limit], has_more=len(found) > limit)


def page_response(
    page: Page[Any], item: type[serializers.Serializer], context: dict[str, Any] | None = None
) -> Response:
    data = item(page.items, many=True, context=context or {}).data
    return Response({"data": data, "has_more": page.has_more})


def page_schema(name: str, item: serializers.Serializer) -> serializers.Serializer:
    """The documented shape of a page: ``item`` is an instance made with ``many=True``."""
    return inline_serializer(
        name,
        {
            "data": item,
            "has_more": serializers.BooleanField(
                help_text="Whether more items follow: pass the last item's id as "
                "starting_after to read them."
            ),
        },
    )


def _cursor(within: QuerySet[M], listing: Listing, value: str) -> M:
    found = None
    if listing.id_field != "pk" or is_id(value):
        found = within.filter(**{listing.id_field: value}).first()
    if found is None:
        raise ApiError(
            400,
            "resource_missing",
            f"starting_after {value!r} names no {listing.noun} of this list: pass the id of "
            "the last item of the previous page, or leave starting_after out to start from "
            "the newest.",
            "starting_after",
        )
    return found


def _after(items: QuerySet[M], cursor: M, order: str) -> QuerySet[M]:
    value = getattr(cursor, order)
    return items.filter(Q(**{f"{order}__lt": value}) | Q(**{order: value, "pk__lt": cursor.pk}))
