from django.apps import AppConfig


class AlertsConfig(AppConfig):
    """Alerts, notifications and auto-recharge, evaluated as usage is rated."""

    name = "billing_portal.alerts"
    label = "alerts"

    def ready(self) -> None:
        from billing_portal.alerts import receivers  # noqa: F401
