"""The page of ``fastimg serve`` in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``make test``; selenium drives it).

Load ``/``, see the collection's thumbnails, upload a query, see the results the
library gives for that file, click one, see the library's ``similar`` of it; an
error shows a message; a phone-sized window needs no sideways scrolling.

Without Chromium the test **fails** (CI must have it: ``make test`` installs it
as root); ``FASTIMG_TEST_NO_BROWSER=1`` skips it, saying so, on a machine where
it cannot be installed.  ``FASTIMG_UPDATE_SCREENSHOT=1 FASTIMG_TEST_NO_SHARED=1`` rewrites
docs/serve.png (on generated images: no ../shared picture goes into the repository).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'fastimg[serve]') is not installed")

import fastimg  # noqa: E402
from _serve import make_collection, running_server  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.environ.get("FASTIMG_TEST_NO_BROWSER") == "1":
        pytest.skip("FASTIMG_TEST_NO_BROWSER=1: the page's browser test is not run")
    pytest.fail("headless Chromium is missing (chromium and chromedriver on PATH): `make test` installs "
                "Debian's chromium and chromium-driver as root (`make browser`); elsewhere install them, or set "
                "FASTIMG_TEST_NO_BROWSER=1 to skip this test knowingly")


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_browser")
    ixpath, indexed, queries = make_collection(root)
    with running_server(ixpath) as (base, _):
        yield base, ixpath, queries


def _wait(drv, cond, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(lambda d: cond(d))


def _cards(drv) -> list:
    from selenium.webdriver.common.by import By

    return drv.find_elements(By.CSS_SELECTOR, "#grid .card")


def _ids(drv) -> list[int]:
    """Ids of the result cards, in order (read in the page: no stale element between reads)."""
    return drv.execute_script("return [...document.querySelectorAll('#grid .card')].map(c => Number(c.dataset.id));")


def _loaded_ids(drv) -> list[int]:
    """Ids of the cards whose thumbnail has loaded (a decoded image, not a broken one)."""
    return drv.execute_script(
        "return [...document.querySelectorAll('#grid .card')]"
        ".filter(c => { const i = c.querySelector('img'); return i.complete && i.naturalWidth > 0; })"
        ".map(c => Number(c.dataset.id));")


def test_the_page_browses_searches_and_follows_clicks(browser, served):
    from selenium.webdriver.common.by import By

    base, ixpath, queries = served
    with fastimg.Index.open(ixpath) as ix:
        live = ix.live_ids().tolist()
        query = queries[1]
        want_upload = [h.id for h in ix.search(str(query), k=24, exclude_self=False)]
    browser.get(base + "/")
    # browsing: the collection's thumbnails, all of them loaded
    _wait(browser, lambda d: len(_loaded_ids(d)) >= min(10, len(live)))
    assert _ids(browser) == live
    assert "of %d images" % len(live) in browser.find_element(By.ID, "status").text
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#metric option")]
    assert "cosine" in options
    # upload a query (the file input behind the drop zone)
    browser.find_element(By.ID, "file").send_keys(str(query))
    _wait(browser, lambda d: "results for" in d.find_element(By.ID, "status").text)
    got = _ids(browser)
    assert got == want_upload
    _wait(browser, lambda d: len(_loaded_ids(d)) == len(got))
    if os.environ.get("FASTIMG_UPDATE_SCREENSHOT") == "1" and os.environ.get("FASTIMG_TEST_NO_SHARED") == "1":
        browser.save_screenshot(str(DOCS / "serve.png"))
    # click the second result: its similar images
    clicked = got[1]
    with fastimg.Index.open(ixpath) as ix:
        want_similar = [h.id for h in ix.similar(clicked, k=24)]
    _cards(browser)[1].click()
    _wait(browser, lambda d: _ids(d) == want_similar)
    assert clicked not in want_similar
    # k and metric controls re-run the last query
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("5\n")  # Enter: the query again with k=5 (not a page reload)
    with fastimg.Index.open(ixpath) as ix:
        want5 = [h.id for h in ix.similar(clicked, k=5)]
    _wait(browser, lambda d: _ids(d) == want5)
    # an error is a visible message
    bad = Path(str(ixpath) + "-notes.txt")
    bad.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    _wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "not an image" in browser.find_element(By.ID, "error").text


def test_the_page_fits_a_phone(browser, served):
    base = served[0]
    browser.set_window_size(390, 844)
    try:
        browser.get(base + "/")
        _wait(browser, lambda d: len(_loaded_ids(d)) >= 10)
        width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width
        columns = browser.execute_script(
            "return getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length")
        assert columns >= 2
    finally:
        browser.set_window_size(1280, 900)
