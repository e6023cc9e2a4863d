from django.apps import AppConfig
from django.db.models.signals import post_migrate


class StaffConfig(AppConfig):
    name = "billing_portal.staff"
    label = "staff"

    def ready(self) -> None:
        from billing_portal.staff.roles import roles_after_migrate

        post_migrate.connect(roles_after_migrate, sender=self, dispatch_uid="staff_roles")
