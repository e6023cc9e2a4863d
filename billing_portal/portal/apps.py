from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "billing_portal.portal"
    label = "portal"
