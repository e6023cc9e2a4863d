from django.apps import AppConfig


class InvoicingConfig(AppConfig):
    name = "billing_portal.invoicing"
    label = "invoicing"
    verbose_name = "Invoicing"

    def ready(self) -> None:
        from billing_portal.invoicing import checks  # noqa: F401  (registers the reconcile checks)
