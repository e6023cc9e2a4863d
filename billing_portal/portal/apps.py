from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "billing_portal.portal"
    label = "portal"

    def ready(self) -> None:
        from billing_portal.alerts.selectors import alert_managers_register
        from billing_portal.portal.selectors import manager_emails_for

        # Alerts e-mail a customer's portal managers when the customer listed nobody.
        alert_managers_register(managers_of=manager_emails_for)
