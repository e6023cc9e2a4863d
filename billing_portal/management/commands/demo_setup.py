"""Prepare a local installation for a demo: staff user, catalog and demo data.

Safe to run on every start: what exists is left alone.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandParser

DEMO_CATALOG = Path(settings.BASE_DIR) / "docs" / "examples" / "catalog.yaml"
PASSWORD_FILE = Path(settings.BASE_DIR) / "var" / "demo-admin-password"


def _demo_key() -> str:
    key_file = Path(settings.BASE_DIR) / "var" / "demo-api-key"
    return key_file.read_text().strip() if key_file.exists() else "(none: run demo_data)"


def _demo_portal_login() -> str:
    password_file = Path(settings.BASE_DIR) / "var" / "demo-portal-password"
    if not password_file.exists():
        return "(no demo portal user)"
    return f"user 'owner@acme.test', password {password_file.read_text().strip()!r}"


class Command(BaseCommand):
    help = "Create the demo staff user, load the demo catalog and demo data, print the URLs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, base_url: str, username: str, **options: Any) -> None:
        password = self._ensure_superuser(username)
        if "load_catalog" in get_commands() and DEMO_CATALOG.exists():
            call_command("load_catalog", str(DEMO_CATALOG))
        if "demo_data" in get_commands():
            call_command("demo_data")
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  Health:        {base_url}/healthz",
                    f"  Staff admin:   {base_url}/admin/",
                    f"                 user {username!r}, password {password!r}",
                    f"  API docs:      {base_url}/api/docs/",
                    f"  OpenAPI:       {base_url}/api/schema/",
                    f"  API key:       {_demo_key()}",
                    f"  Portal:        {base_url}/portal/",
                    f"                 {_demo_portal_login()}",
                    "",
                ]
            )
        )

    def _ensure_superuser(self, username: str) -> str:
        PASSWORD_FILE.parent.mkdir(parents=True, exist_ok=True)
        if not PASSWORD_FILE.exists():
            PASSWORD_FILE.write_text(secrets.token_urlsafe(12))
        password = PASSWORD_FILE.read_text().strip()
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        if created or not user.check_password(password):
            user.set_password(password)
            user.is_staff = user.is_superuser = True
            user.save()
        return password
