"""The Celery app: worker and beat share this module.

Jobs are scheduled here; each names a thin task that reloads rows by id and calls one
service, so running a job twice does no harm.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")

app = Celery("billing_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Filled in as the apps grow their periodic jobs (see each app's tasks.py).
app.conf.beat_schedule = {}
