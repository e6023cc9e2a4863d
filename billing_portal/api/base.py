"""What every endpoint shares: ``BaseApiView`` (auth, scope, throttle, idempotency, the
error envelope), request body parsing and the JSON renderer.

An endpoint subclasses ``BaseApiView``, declares ``required_scope`` and raises ``ApiError``
(or lets a service's ``DomainError`` or a serializer's ``ValidationError`` escape).

The DRF defaults in settings do not name these classes: ``rest_framework.views`` reads
them while it is imported, and this module imports it, so the two would import each other.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from typing import IO, Any, ClassVar

import msgspec
from django.http.response import HttpResponseBase
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_portal.api.auth import ApiKeyAuthentication, ApiKeyRateThrottle, HasApiScope
from billing_portal.api.errors import ApiError
from billing_portal.api.idempotency import (
    IdempotentReplay,
    idempotency_claim,
    idempotency_release,
    idempotency_settle,
)
from billing_portal.api.models import IdempotencyRecord
from billing_portal.api.schema import ApiAutoSchema
from billing_portal.web import (
    DATABASE_UNAVAILABLE_ERRORS,
    json_nesting_exceeds,
    json_too_deep_message,
)
from plans.models import ApiKey

logger = logging.getLogger(__name__)


# --- request bodies ------------------------------------------------------------------


class ApiJSONParser(JSONParser):
    """DRF's JSON parser with a nesting limit (and no RecursionError) before decoding."""

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        body = stream.read()
        if json_nesting_exceeds(body):
            raise _too_deep()
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError as exc:
            raise _too_deep() from exc


def _too_deep() -> ApiError:
    message = json_too_deep_message()
    return ApiError(400, "invalid_json", f"{message[0].upper()}{message[1:]}.")


# --- the view base -------------------------------------------------------------------


class BaseApiView(APIView):
    """Base of every API endpoint: key auth, ``required_scope``, per-key throttling, and
    Idempotency-Key on POST (the view runs once per key; retries get the stored answer)."""

    authentication_classes = [ApiKeyAuthentication]
    parser_classes = [ApiJSONParser]
    permission_classes = [HasApiScope]
    throttle_classes = [ApiKeyRateThrottle]
    schema = ApiAutoSchema()
    required_scope: ClassVar[str | Mapping[str, str] | None] = None

    _idempotency_record: IdempotencyRecord | None = None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # After auth, scope and throttle checks, so refusals there are never stored. Keys
        # are per API key: a view opened to callers without one takes no Idempotency-Key.
        if request.method == "POST" and isinstance(request.auth, ApiKey):
            self._idempotency_record = idempotency_claim(request=request, api_key=request.auth)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, IdempotentReplay):
            return exc.response
        try:
            return super().handle_exception(exc)
        except Exception:
            self._idempotency_settled(None)
            raise

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        self._idempotency_settled(response)
        return response

    def _idempotency_settled(self, response: HttpResponseBase | None) -> None:
        record, self._idempotency_record = self._idempotency_record, None
        if record is None:
            return
        try:
            if response is None:
                idempotency_release(record=record)
            else:
                idempotency_settle(record=record, response=response)
        except DATABASE_UNAVAILABLE_ERRORS as exc:
            # The database went away after the claim: the answer still goes out. The
            # claim stays unanswered, so a retry with this key is told it is in use.
            logger.warning("Idempotency-Key claim %s left unsettled: %s", record.pk, exc)


class FastJSONRenderer(JSONRenderer):
    """JSON through msgspec: for large responses (an ingest batch's 1000 results)."""

    encoder: ClassVar[msgspec.json.Encoder] = msgspec.json.Encoder()

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if data is None:
            return b""
        return self.encoder.encode(data)
