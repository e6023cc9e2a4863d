from django.apps import AppConfig


class StaffConfig(AppConfig):
    name = "billing_portal.staff"
    label = "staff"
