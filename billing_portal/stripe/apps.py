from django.apps import AppConfig


class StripeIntegrationConfig(AppConfig):
    """Stripe: the adapter, invoice and credit note sync, pack payments and webhooks."""

    name = "billing_portal.stripe"
    label = "stripe_integration"
    verbose_name = "Stripe"

    def ready(self) -> None:
        from billing_portal.stripe import receivers  # noqa: F401  (connects the signal receivers)
