"""The content types of the moved models follow them to alerts.

A content type is named by its app label, so left alone ``portal.alertsettings`` and
``portal.autorecharge`` would go stale and Django would make fresh ``alerts.*`` ones:
admin log entries and the models' permissions (and any group or user holding them) would
then point at a model that no longer exists. Renaming the rows keeps them attached.

On a fresh database there is nothing to rename: content types are made after migrating.
"""

from typing import Any

from django.db import migrations

MODELS = ("alertsettings", "autorecharge")


def _relabel(apps: Any, schema_editor: Any, old: str, new: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    for model in MODELS:
        moved = ContentType.objects.using(db).filter(app_label=old, model=model).first()
        if moved is None:
            continue
        # A migrate that stopped between the two apps' migrations has already made an
        # empty content type under the new label; the old one carries the history.
        ContentType.objects.using(db).filter(app_label=new, model=model).delete()
        moved.app_label = new
        moved.save(using=db, update_fields=["app_label"])
    ContentType.objects.clear_cache()


def forwards(apps: Any, schema_editor: Any) -> None:
    _relabel(apps, schema_editor, "portal", "alerts")


def backwards(apps: Any, schema_editor: Any) -> None:
    _relabel(apps, schema_editor, "alerts", "portal")


class Migration(migrations.Migration):

    dependencies = [
        ("alerts", "0003_alertsettings_autorecharge_from_portal"),
        ("portal", "0004_alertsettings_autorecharge_to_alerts"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
