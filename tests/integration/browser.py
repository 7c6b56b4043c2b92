"""What the console's browser tests share: Debian's chromium through Playwright (the `browser` fixture in
conftest.py launches it), a module's own console principals, and logging in through the login page."""
from __future__ import annotations

import os
import re
import shutil

import pytest
from playwright.sync_api import expect

CHROMIUM = os.environ.get("INTELBUS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def launch(playwright):
    """The system's chromium (Playwright's own download is not needed, nor possible offline); skipped without one."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM}: `apt-get install chromium` (`intelbus install` does it)")
    return playwright.chromium.launch(executable_path=CHROMIUM,
                                      args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])


def add_console_people(settings, people) -> dict[str, str]:
    """People [(name, region, branch, roles)] in the stack's principal store, enabled, each with a fresh
    password: {name: password}. A module's own names, so that no other test session resets their passwords."""
    import secrets

    from identity.store import PrincipalStore, store_path

    store = PrincipalStore(store_path(settings))
    passwords = {}
    try:
        for name, region, branch, roles in people:
            passwords[name] = secrets.token_urlsafe(16)
            if store.find(name) is None:
                store.add(actor="pytest", name=name, kind="person", region=region, branch=branch, roles=roles,
                          clearance="INTERNAL", password=passwords[name])
            else:
                store.set_disabled(actor="pytest", name=name, disabled=False)
                store.reset_password(actor="pytest", name=name, password=passwords[name])
    finally:
        store.close()
    return passwords


def log_in(page, name: str, password: str) -> None:
    """Fill the login page and press its button (what happens next is the caller's to check)."""
    page.get_by_label("用户名 Name").fill(name)
    page.get_by_label("密码 Password").fill(password)
    page.get_by_role("button", name="登录 Log in").click()


def open_console(browser, gateway, passwords: dict[str, str], name: str, path: str = "/"):
    """A browser of its own (a context) for `name`, sent to the login page from `path`, logged in, back on `path`."""
    # the browser's clock in UTC: the console shows China Standard Time whatever the machine's zone
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, locale="zh-CN", timezone_id="UTC",
                                  accept_downloads=True)
    page = context.new_page()
    page.on("console", lambda m: print(f"[{name} console] {m.type}: {m.text}"))
    page.on("pageerror", lambda e: print(f"[{name} page error] {e}"))
    page.goto(gateway.url + path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    log_in(page, name, passwords[name])
    expect(page).to_have_url(gateway.url + path)
    expect(page.locator("#me-name")).to_contain_text(name)
    return page
