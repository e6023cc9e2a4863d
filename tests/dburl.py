"""The URL of the database the tests run on, for commands started in a subprocess."""

from __future__ import annotations

from urllib.parse import quote

from django.db import connection


def database_url_for_subprocess() -> str:
    db = connection.settings_dict
    # The embedded server listens on a Unix socket; dj-database-url puts its folder in
    # OPTIONS["host"] and leaves HOST empty.
    host = db.get("HOST") or db.get("OPTIONS", {}).get("host", "")
    user, password, name = db["USER"], db.get("PASSWORD") or "", db["NAME"]
    if host.startswith("/"):
        return f"postgresql://{user}:{quote(password)}@/{name}?host={quote(host)}"
    return f"postgresql://{user}:{quote(password)}@{host}:{db.get('PORT') or 5432}/{name}"
