from django.apps import AppConfig


class OutboundConfig(AppConfig):
    """Outgoing webhooks: signed events to the endpoints the operator configures."""

    name = "billing_portal.outbound"
    label = "outbound"
    verbose_name = "outgoing webhooks"

    def ready(self) -> None:
        from billing_portal.outbound import receivers  # noqa: F401
