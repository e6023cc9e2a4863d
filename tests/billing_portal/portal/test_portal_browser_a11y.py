"""The portal in a real browser for keyboard and screen-reader users and on a phone: an
htmx save keeps focus in its form and is announced, errors are wired to their fields, the
dashboard fits 390 px, and every page passes axe-core (no serious or critical issue)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from billing_portal.alerts.models import AlertSettings
from billing_portal.invoicing.purchases import purchase_create
from billing_portal.stripe.payments import purchase_demo_pay
from plans.models import CreditPack, Customer
from tests.accessibility import assert_accessible
from tests.billing_portal.portal.factories import PASSWORD, member, subscribed_customer, usage
from tests.browser import screenshot
from tests.plans.factories import load_demo_catalog

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _demo_mode(settings: Any) -> None:
    settings.STRIPE_API_KEY = ""
    settings.BILLING_DEMO_PAYMENTS = True


def _customer_with_history() -> Customer:
    load_demo_catalog()
    acme = subscribed_customer("acme", days_ago=20)
    now = timezone.now()
    mixes = [
        ("large", "output", "400000"),
        ("large", "input", "1000000"),
        ("small", "input", "3000000"),
        ("small", "output", "900000"),
    ]
    for day in range(20):
        for n, (model, token_type, value) in enumerate(mixes[: 1 + day % 4]):
            usage(
                acme,
                f"evt-{day}-{n}",
                at=now - timedelta(days=day, hours=1),
                value=value,
                dimensions={"model": model, "token_type": token_type},
            )
    usage(acme, "evt-doc", at=now - timedelta(days=2), value="3", event_name="doc.summary")
    return acme


def _sign_in(page: Any, base: str, customer: Customer) -> None:
    user = member(customer)
    page.goto(f"{base}/portal/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/portal/")


def _focus_inside(page: Any, selector: str) -> bool:
    return bool(
        page.evaluate(
            "s => { const box = document.querySelector(s);"
            " return !!box && box.contains(document.activeElement)"
            " && document.activeElement !== document.body; }",
            selector,
        )
    )


def _announced(page: Any) -> str:
    """The text of the page's polite live region, checked to be one."""
    region = page.locator("#announcer")
    assert region.get_attribute("aria-live") == "polite"
    assert region.get_attribute("role") == "status"
    return str(region.inner_text())


def _described_by_ids_exist(page: Any, selector: str) -> list[str]:
    ids = (page.get_attribute(selector, "aria-describedby") or "").split()
    for id_ in ids:
        assert page.locator(f"#{id_}").count() == 1, f"aria-describedby names #{id_}"
    return ids


def test_an_htmx_save_keeps_focus_in_the_form_and_announces_the_result(
    page: Any, live_server: Any
) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme")
    base = live_server.url
    _sign_in(page, base, acme)
    page.goto(f"{base}/portal/controls/")
    assert page.get_attribute('nav a[href="/portal/controls/"]', "aria-current") == "page"
    assert page.locator("nav a[aria-current]").count() == 1

    # Keyboard users start at the skip link, which lands in the page's main content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    page.evaluate("window.__stay = 1")
    page.fill("#id_usage_thresholds", "60, 90")
    page.focus("#alerts-save")
    page.keyboard.press("Enter")
    page.wait_for_selector("#alerts-status")
    assert page.evaluate("window.__stay") == 1, "saved in place"
    assert _focus_inside(page, "#alerts"), "focus stays on the form"
    assert page.evaluate("document.activeElement.id") == "alerts-save"
    page.wait_for_function("document.querySelector('#announcer').innerText.length > 0")
    assert _announced(page) == "Alert settings saved."
    assert AlertSettings.objects.get(customer=acme).usage_thresholds == [60, 90]

    # A refused save: focus moves to the field at fault, which names its error.
    page.fill("#id_spend_limit_credits", "1e99")
    page.focus("#limit-save")
    page.keyboard.press("Enter")
    page.wait_for_selector("#id_spend_limit_credits-error")
    assert page.evaluate("window.__stay") == 1
    # htmx moves focus to the autofocus field once the swapped form has settled.
    page.wait_for_function("document.activeElement.id === 'id_spend_limit_credits'")
    assert _focus_inside(page, "#limit")
    field = "#id_spend_limit_credits"
    assert page.get_attribute(field, "aria-invalid") == "true"
    ids = _described_by_ids_exist(page, field)
    assert "id_spend_limit_credits-error" in ids
    error = page.inner_text("#id_spend_limit_credits-error")
    assert error == "Enter at most 1,000,000,000,000 credits."
    page.wait_for_function("document.querySelector('#announcer').innerText.includes('not saved')")
    assert _announced(page) == f"Spend limit not saved. Monthly spend limit (credits): {error}"
    screenshot(page, "portal-a11y-controls-error.png")
    assert_accessible(page)

    # Fixed, it saves: the error and aria-invalid are gone and the result is read out.
    page.fill(field, "25,000")
    page.focus("#limit-save")
    page.keyboard.press("Enter")
    page.wait_for_selector("#limit-status")
    assert page.get_attribute(field, "aria-invalid") is None
    assert page.input_value(field) == "25,000"
    _described_by_ids_exist(page, field)
    assert _focus_inside(page, "#limit")
    assert _announced(page) == "Spend limit saved."
    # Every described-by id on the page exists (help texts included).
    missing = page.evaluate(
        "() => [...document.querySelectorAll('[aria-describedby]')].flatMap(e =>"
        " e.getAttribute('aria-describedby').split(/\\s+/)).filter(id => !document"
        ".getElementById(id))"
    )
    assert missing == []
    connections.close_all()


def _fits(page: Any, selector: str) -> None:
    sizes = page.evaluate(
        "s => { const e = s === 'page' ? document.documentElement : document.querySelector(s);"
        " return [e.scrollWidth, e.clientWidth]; }",
        selector,
    )
    assert sizes[0] <= sizes[1], f"{selector} overflows: {sizes[0]} px in {sizes[1]} px"


def test_a_phone_width_dashboard_fits_its_chart_labels_and_usage_table(
    page: Any, live_server: Any
) -> None:
    acme = _customer_with_history()
    base = live_server.url
    page.set_viewport_size(PHONE)
    _sign_in(page, base, acme)
    screenshot(page, "portal-a11y-dashboard-390.png")
    _fits(page, "page")
    _fits(page, "#usage-table-box")
    # The last column (cost) and the credits column are on screen, not cut off.
    for column in (3, 4):
        cells = page.locator(f"#usage-table tbody tr > :nth-child({column})")
        assert cells.count() > 1
        box = cells.first.bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE["width"]
    assert "$" in page.inner_text("#usage-table tbody tr:first-child td:last-child")
    # Every date label of the chart lies inside the chart.
    outside = page.evaluate(
        "() => { const svg = document.querySelector('#usage svg.chart').getBoundingClientRect();"
        " return [...document.querySelectorAll('#usage svg .tick')]"
        ".filter(t => getComputedStyle(t).display !== 'none')"
        ".map(t => t.getBoundingClientRect())"
        ".filter(r => r.left < svg.left - 0.5 || r.right > svg.right + 0.5).length; }"
    )
    assert outside == 0
    overlapping = page.evaluate(
        "() => { const r = [...document.querySelectorAll('#usage svg .tick.x')]"
        ".filter(t => getComputedStyle(t).display !== 'none')"
        ".map(t => t.getBoundingClientRect());"
        " return r.slice(1).filter((b, i) => b.left < r[i].right).length; }"
    )
    assert overlapping == 0, "date labels do not run into each other"
    label_px = page.evaluate(
        "() => document.querySelector('#usage svg .tick.x').getBoundingClientRect().height"
    )
    assert label_px >= 9, "date labels stay readable on a phone"
    assert page.is_visible(".chart-scale")
    for days in ("7", "90"):
        page.click(f"text={days} days")
        page.wait_for_selector(f'#usage a[aria-current][href*="range={days}&"]')
        screenshot(page, f"portal-a11y-dashboard-390-{days}-days.png")
        _fits(page, "page")
        _fits(page, "#usage-table-box")
    assert_accessible(page)
    page.set_viewport_size(DESKTOP)
    page.goto(f"{base}/portal/")
    screenshot(page, "portal-a11y-dashboard-1280.png")
    connections.close_all()


def test_every_page_passes_axe_at_desktop_and_phone_width(page: Any, live_server: Any) -> None:
    acme = _customer_with_history()
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="test"
    )
    purchase_demo_pay(purchase=purchase, actor="test")
    base = live_server.url
    _sign_in(page, base, acme)
    pages = {
        "dashboard": "/portal/",
        "controls": "/portal/controls/",
        "billing": "/portal/billing/",
        "activity": "/portal/activity/",
        "invoice": f"/portal/billing/invoices/{purchase.invoice.pk}/",
    }
    for size, viewport in (("1280", DESKTOP), ("390", PHONE)):
        page.set_viewport_size(viewport)
        for name, path in pages.items():
            page.goto(f"{base}{path}")
            screenshot(page, f"portal-a11y-{name}-{size}.png")
            assert_accessible(page)
            _fits(page, "page")
    # The invoice names its date and who it is billed to, and prints without the portal.
    page.goto(f"{base}{pages['invoice']}")
    assert page.inner_text("#issued-on") != ""
    assert "Acme" in page.inner_text("#bill-to")
    assert page.is_visible("[data-print]")
    page.emulate_media(media="print")
    assert not page.is_visible("header.top")
    assert not page.is_visible("[data-print]")
    connections.close_all()
