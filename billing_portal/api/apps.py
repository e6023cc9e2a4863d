from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "billing_portal.api"
    label = "api"
    verbose_name = "HTTP API"
