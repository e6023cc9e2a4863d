"""``Idempotency-Key`` on POST: the same key and body answer the first response again."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, NoReturn

from django.db import (
    IntegrityError,
    transaction,
)
from django.http.response import HttpResponseBase
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.errors import (
    IDEMPOTENCY_ERROR,
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    REPLAYED_HEADER,
    ApiError,
)
from billing_portal.api.models import IdempotencyRecord
from plans.models import ApiKey

# --- idempotency ---------------------------------------------------------------------


class IdempotentReplay(Exception):
    """Not an error: carries a stored response out of ``initial`` to be sent instead."""

    def __init__(self, response: Response) -> None:
        super().__init__("replayed")
        self.response = response


def idempotency_claim(*, request: Request, api_key: ApiKey) -> IdempotencyRecord | None:
    """Claim the request's Idempotency-Key before the view runs.

    Returns the claim (None without the header); raises IdempotentReplay with the first
    response when the same request was answered before, or an ApiError when the key is
    reused for another request or its first request is still running.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    _check_key(key)
    fingerprint = _fingerprint(request)
    try:
        # The unique (api_key, key) constraint decides races: a check-then-insert could
        # let two concurrent retries both run the view.
        with transaction.atomic():
            return IdempotencyRecord.objects.create(
                api_key=api_key,
                key=key,
                method=request.method or "",
                path=request.path[:512],
                request_hash=fingerprint,
            )
    except IntegrityError:
        _replay_or_refuse(api_key=api_key, key=key, fingerprint=fingerprint)


def idempotency_settle(*, record: IdempotencyRecord, response: HttpResponseBase) -> None:
    """Store the response for replay; a 5xx releases the key so the client can retry."""
    if response.status_code >= 500 or not isinstance(response, Response):
        idempotency_release(record=record)
        return
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        status_code=response.status_code, response_body=_plain_json(response.data)
    )


def idempotency_release(*, record: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk).delete()


def idempotency_records_prune(*, older_than: datetime) -> int:
    """Forget keys claimed before ``older_than``: a retry comes within minutes, and some
    SDKs (stripe-python) put a fresh key on every call, so kept forever they only grow. A
    claim its request never settled (the process died) goes too, freeing its key."""
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=older_than).delete()
    return deleted


def _check_key(key: str) -> None:
    if not key.strip():
        raise ApiError(
            400,
            "idempotency_key_invalid",
            f"The {IDEMPOTENCY_HEADER} header is empty: send a unique value such as a UUID, "
            "or leave the header out.",
        )
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise ApiError(
            400,
            "idempotency_key_too_long",
            f"The {IDEMPOTENCY_HEADER} header is {len(key)} characters long: use at most "
            f"{IDEMPOTENCY_KEY_MAX_LENGTH}, e.g. a UUID.",
        )


def _fingerprint(request: Request) -> str:
    # The raw body: a retry resends the same bytes. The path is hashed whole, so a long
    # one cut short in the record's path column still tells two requests apart.
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    digest.update(request.body)
    return digest.hexdigest()


def _replay_or_refuse(*, api_key: ApiKey, key: str, fingerprint: str) -> NoReturn:
    first = IdempotencyRecord.objects.filter(api_key=api_key, key=key).first()
    if first is not None and first.request_hash != fingerprint:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"This {IDEMPOTENCY_HEADER} was already used for a different request (method, "
            "path or body): send a new key for a new request, or repeat the first one exactly.",
            type=IDEMPOTENCY_ERROR,
        )
    if first is None or first.status_code is None:
        # None: the first request has just failed and released the key.
        raise ApiError(
            409,
            "idempotency_key_in_use",
            f"A request with this {IDEMPOTENCY_HEADER} is still being processed: retry "
            "after it has finished.",
            type=IDEMPOTENCY_ERROR,
        )
    replay = Response(first.response_body, status=first.status_code)
    replay[REPLAYED_HEADER] = "true"
    raise IdempotentReplay(replay)


def _plain_json(data: Any) -> Any:
    # What the client received: Decimals, datetimes and UUIDs as the renderer wrote them.
    if data is None:
        return None
    return json.loads(JSONRenderer().render(data))
