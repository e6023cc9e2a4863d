from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from plans.apikeys import ALL_SCOPES, InvalidApiKeyRequest, api_key_create


class Command(BaseCommand):
    help = (
        "Create an API key and print its secret once, on the last line of output; "
        "only a hash of it is stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="who or what will use the key")
        parser.add_argument(
            "--scopes",
            default=",".join(ALL_SCOPES),
            help=f"comma-separated, from: {', '.join(ALL_SCOPES)} (default: all)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            api_key, secret = api_key_create(
                name=options["name"], scopes=options["scopes"].split(",")
            )
        except InvalidApiKeyRequest as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Created API key {api_key.name!r} (prefix {api_key.prefix}, "
            f"scopes: {', '.join(api_key.scopes)})."
        )
        self.stdout.write("Copy the secret now: it cannot be shown again.")
        # Last line and nothing else on it, so scripts can take it with `tail -n 1`.
        self.stdout.write(secret)
