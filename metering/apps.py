from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"

    def ready(self) -> None:
        from metering import checks  # noqa: F401  (registers the reconcile checks)
