import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

from billing_portal.runtime import startup_objects_freeze

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_portal.settings")
application = get_wsgi_application()
# The views are imported with the URLconf, which Django would otherwise load on the first
# request: load it now, so that what it imports is frozen with the rest of startup.
get_resolver().url_patterns  # noqa: B018
startup_objects_freeze()
