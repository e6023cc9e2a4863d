"""The accessibility check the browser tests use finds what it is there to find."""

from __future__ import annotations

from typing import Any

import pytest

from tests.accessibility import assert_accessible, axe_violations


def test_axe_reports_a_serious_violation_and_passes_a_clean_page(page: Any) -> None:
    page.set_content(
        '<html lang="en"><head><title>t</title></head><body><main>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><button></button>'
        "</main></body></html>"
    )
    found = {v["id"] for v in axe_violations(page)}
    assert {"image-alt", "button-name"} <= found
    with pytest.raises(AssertionError, match="image-alt"):
        assert_accessible(page)
    page.set_content(
        '<html lang="en"><head><title>t</title></head><body><main>'
        '<img alt="logo" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
        "<button>Save</button></main></body></html>"
    )
    assert_accessible(page)
