"""The web and worker processes freeze what they load at startup, so the collector does
not scan it again on every full collection (billing_portal.runtime)."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest
from celery.signals import worker_process_init

_WSGI_PROBE = """
import gc, sys
import billing_portal.wsgi
print(gc.get_freeze_count(), "billing_portal.api.events" in sys.modules)
"""


def test_the_wsgi_application_freezes_startup_with_the_views_loaded() -> None:
    # A process of its own: importing the WSGI module is what gunicorn's workers do.
    done = subprocess.run(
        [sys.executable, "-c", _WSGI_PROBE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    frozen, views_loaded = done.stdout.split()
    # Django, DRF and the project's modules: far more than an interpreter's own objects.
    assert int(frozen) > 100_000
    assert views_loaded == "True"


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_a_worker_pool_process_freezes_startup_once_it_has_started() -> None:
    assert gc.get_freeze_count() == 0
    worker_process_init.send(sender=None)
    assert gc.get_freeze_count() > 100_000
