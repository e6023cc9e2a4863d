"""The OpenAPI document lists exactly the operations the API has promised.

The recorded list changes only on purpose (a new endpoint): moving code around must not
change a path, a method or an operation id that integrators generate clients from.
"""

from __future__ import annotations

from pathlib import Path

from drf_spectacular.generators import SchemaGenerator

RECORDED = Path(__file__).with_name("openapi_operations.txt")
METHODS = ("get", "post", "put", "patch", "delete")


def test_the_schema_has_the_recorded_paths_and_operations() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = [
        f"{method.upper()} {path} {operation.get('operationId')}"
        for path, items in sorted(schema["paths"].items())
        for method, operation in sorted(items.items())
        if method in METHODS
    ]
    assert operations == RECORDED.read_text().splitlines()
