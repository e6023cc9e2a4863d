"""The boundaries import-linter cannot express: the domain cores use Django, but never its
HTTP side (``django.http``, views, the test client). The layer, HTTP-library, Stripe and
cycle rules are import-linter contracts in pyproject.toml, run by ``make test``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAIN_APPS = ("ledger", "plans", "metering")
HTTP_MODULES = ("django.http", "django.views", "django.shortcuts", "django.test")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_the_domain_cores_import_nothing_of_djangos_http_side() -> None:
    offending = [
        f"{path.relative_to(ROOT)} imports {name}"
        for app in DOMAIN_APPS
        for path in (ROOT / app).rglob("*.py")
        for name in _imports(path)
        if name.startswith(HTTP_MODULES)
    ]
    assert offending == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "view.py"
    module.write_text("from django.http import HttpResponse\n")
    assert any(name.startswith(HTTP_MODULES) for name in _imports(module))
