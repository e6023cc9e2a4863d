"""How the API describes itself in OpenAPI: the error shapes, the key, the header."""

from __future__ import annotations

from typing import Any, ClassVar

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
)
from rest_framework import serializers

from billing_portal.api.auth import ApiKeyAuthentication
from billing_portal.api.errors import ERROR_TYPES, IDEMPOTENCY_HEADER

# --- OpenAPI -------------------------------------------------------------------------


class ApiErrorSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=ERROR_TYPES)
    code = serializers.CharField(help_text="Stable, machine-readable, e.g. `missing_field`.")
    message = serializers.CharField(help_text="What went wrong and what to change.")
    param = serializers.CharField(
        allow_null=True, help_text="The request field at fault (dotted path), if any."
    )


class ErrorResponseSerializer(serializers.Serializer):
    error = ApiErrorSerializer()


_ERROR_DESCRIPTIONS = {
    400: "Invalid request; `param` names the field to fix.",
    401: "Missing, invalid or revoked API key.",
    403: "The API key lacks the scope this endpoint needs.",
    404: "No such resource.",
    409: "Conflicts with the current state, or an Idempotency-Key reused.",
    429: "Rate limited; retry after the `Retry-After` seconds.",
    503: "The database is unavailable; retry after the `Retry-After` seconds.",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """Error envelopes for ``extend_schema(responses=...)``; 401, 403 and 429 by default."""
    return {
        status: OpenApiResponse(
            ErrorResponseSerializer, description=_ERROR_DESCRIPTIONS.get(status, "Error.")
        )
        for status in statuses or (401, 403, 429)
    }


IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    name=IDEMPOTENCY_HEADER,
    type=OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "Up to 255 characters, unique per request (a UUID works). A retry with the same key "
        "and body returns the first response again, with `Idempotent-Replayed: true`; the "
        "same key with another body is refused with 409 `idempotency_key_reused`."
    ),
)


class ApiAutoSchema(AutoSchema):
    """Documents what every BaseApiView shares: the Idempotency-Key header on POST, the
    errors any endpoint can answer (auth, throttling, and on POST validation and
    idempotency conflicts), and distinct names for the nested Input/Output serializers."""

    SHARED_ERRORS: ClassVar[dict[str, tuple[int, ...]]] = {
        "POST": (400, 401, 403, 409, 429, 503),
        "GET": (401, 403, 429, 503),
    }

    def get_override_parameters(self) -> list[Any]:
        parameters = list(super().get_override_parameters())
        if self.method == "POST":
            parameters.append(IDEMPOTENCY_KEY_PARAMETER)
        return parameters

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        bodies: dict[str, Any] = super()._get_response_bodies(direction)
        shared = self.SHARED_ERRORS.get(self.method or "", ())
        for status, response in error_responses(*shared).items():
            if str(status) not in bodies:
                bodies[str(status)] = self._get_response_for_code(
                    response, str(status), direction=direction
                )
        return bodies

    def _get_serializer_name(
        self, serializer: Any, direction: Any, bypass_extensions: bool = False
    ) -> str:
        name: str = super()._get_serializer_name(serializer, direction, bypass_extensions)
        if name in {"Input", "Output", "Query"}:
            # One view per operation, each with its own nested Input: name it after the view.
            return type(self.view).__name__.removesuffix("Api") + name
        return name


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return build_bearer_security_scheme_object(
            header_name="Authorization",
            token_prefix="Bearer",  # noqa: S106 - the scheme name, not a secret
        )
