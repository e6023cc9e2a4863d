from django.apps import AppConfig


class BillingPortalConfig(AppConfig):
    name = "billing_portal"
    verbose_name = "Billing"

    def ready(self) -> None:
        from billing_portal import checks  # noqa: F401  (registers the system checks)
