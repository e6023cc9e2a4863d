"""The content types of the moved models follow them (see alerts 0004 for why)."""

from typing import Any

from django.db import migrations

MODELS = ("apikeyratewindow", "idempotencyrecord")


def _relabel(apps: Any, schema_editor: Any, old: str, new: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    for model in MODELS:
        moved = ContentType.objects.using(db).filter(app_label=old, model=model).first()
        if moved is None:
            continue
        ContentType.objects.using(db).filter(app_label=new, model=model).delete()
        moved.app_label = new
        moved.save(using=db, update_fields=["app_label"])
    ContentType.objects.clear_cache()


def forwards(apps: Any, schema_editor: Any) -> None:
    _relabel(apps, schema_editor, "plans", "api")


def backwards(apps: Any, schema_editor: Any) -> None:
    _relabel(apps, schema_editor, "api", "plans")


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0001_idempotency_and_rate_windows_from_plans"),
        ("plans", "0007_idempotency_and_rate_windows_to_api"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
