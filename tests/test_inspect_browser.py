"""The inspect page in a real browser: headless Chromium driven by Selenium.

Outside CI the tests skip, with the reason, when Chromium, its driver or Selenium is missing; with
CI=true they must run (.ci/setup.sh installs Debian's chromium and chromium-driver). The page is
opened from disk (file://), as a user would open it, with no network.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from prefcurate.data.io import open_pairs
from prefcurate.reporting.inspection import inspect_source
from prefcurate.reporting.page import write_page

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1300,1000",
)


def _tools() -> tuple[str, str]:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    missing = [
        name for name, found in (("chromium", browser), ("chromedriver", driver)) if not found
    ]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        reason = (
            f"the browser tests need {', '.join(missing)}: apt-get install chromium "
            "chromium-driver (.ci/setup.sh test does it when run as root)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    browser_path, driver_path = _tools()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = browser_path
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(driver, path: Path) -> float:
    """Load ``path`` and wait for the page's script; return the load time in ms (browser clock)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return !!(window.prefcurateInspect || {}).ready")
    )
    return driver.execute_script(
        "var t = performance.getEntriesByType('navigation')[0];"
        "return t.loadEventEnd > 0 ? t.loadEventEnd : performance.now();"
    )


def errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def bars(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#fig-histogram .barlayer .point path")


def click(driver, element) -> None:
    """A real mouse click at the element's centre (Plotly listens on its drag layer above it)."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    ActionChains(driver).move_to_element(element).pause(0.2).click().perform()


def route_tags(browser) -> list[str]:
    return [e.text for e in browser.find_elements("css selector", "#pairs-list .pair .route")]


def listed_margins(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        p.get_attribute("data-margin")
        for p in driver.find_elements(By.CSS_SELECTOR, "#pairs-list .pair")
    ]


@pytest.fixture(scope="module")
def uf_page(tmp_path_factory):
    """The UltraFeedback page with the control starting at τ = 1 (so the test moves it to 0.5)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "ultrafeedback_1k.jsonl"
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {path} is missing")
        pytest.skip("real data ../shared/data/ultrafeedback_1k.jsonl is not beside this clone")
    out = tmp_path_factory.mktemp("page") / "uf.html"
    return write_page(inspect_source(open_pairs(path), threshold=1.0), out)


def test_page_loads_offline_without_console_errors_and_draws_the_histogram(
    browser, uf_page, record_property
):
    started = time.perf_counter()
    load_ms = open_page(browser, uf_page)  # a fresh profile: plotly.js compiled for the first time
    wall_s = time.perf_counter() - started
    assert errors(browser) == []
    again_ms = open_page(browser, uf_page)  # as when the user reopens it: the code cache is warm
    record_property("page_load_ms", round(load_ms))
    record_property("page_reload_ms", round(again_ms))
    print(
        f"\ninspect page ({uf_page.stat().st_size / 1e6:.1f} MB): first load {load_ms:.0f} ms, "
        f"reload {again_ms:.0f} ms (browser clock; first {wall_s:.2f} s through the driver)"
    )
    assert errors(browser) == []
    # nothing was fetched: the only resource is the file itself
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })"
    )
    assert fetched == []
    drawn = bars(browser)
    assert len(drawn) == 17  # margins 0 … 8 in steps of 0.5
    heights = [b.size["height"] for b in drawn]
    assert heights[1] == max(heights) and heights[0] > 0  # 193 pairs at 0.5, 111 ties
    title = browser.find_element("css selector", "#fig-histogram .gtitle").text
    assert title.startswith("margin histogram")
    # the figures below are drawn as they come into view: scroll down, all of them draw cleanly
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("var p = window.prefcurateInspect; return p.drawn === p.figures")
    )
    assert browser.execute_script("return window.prefcurateInspect.figures") == 3  # + ratings,
    assert len(browser.find_elements("css selector", ".js-plotly-plot")) == 3  # length; no source
    assert errors(browser) == []


def test_clicking_the_tie_bar_lists_only_pairs_with_margin_zero(browser, uf_page):
    open_page(browser, uf_page)
    click(browser, bars(browser)[3])  # margin 1.5 first, so the tie bar really changes the list
    assert set(listed_margins(browser)) == {"1.5"}
    click(browser, bars(browser)[0])
    margins = listed_margins(browser)
    assert len(margins) == 20 and set(margins) == {"0"}
    title = browser.find_element("id", "pairs-title").text
    assert title == "margin 0: 20 of 111 pairs (seeded sample)"
    # a margin range instead of a bar: the samples of the bins 1 and 1.5
    for field, value in (("range-lo", "1"), ("range-hi", "1.5")):
        box = browser.find_element("id", field)
        box.clear()
        box.send_keys(value)
    browser.find_element("css selector", "#range-form button").click()
    margins = listed_margins(browser)
    assert len(margins) == 40 and set(margins) == {"1", "1.5"}
    assert errors(browser) == []


def test_moving_tau_to_half_routes_the_ties_to_sft(browser, uf_page):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, uf_page)
    count = browser.find_element("id", "sft-count")
    assert count.get_attribute("data-sft") == "302"  # τ = 1: margins 0 and 0.5, less 2 identical
    click(browser, bars(browser)[1])  # the pairs of margin 0.5: below τ = 1, so SFT
    assert set(listed_margins(browser)) == {"0.5"}
    assert set(route_tags(browser)) == {"→ SFT"}
    slider = browser.find_element("id", "tau")
    slider.send_keys(Keys.ARROW_LEFT)  # one grid step down: τ = 0.5
    assert browser.find_element("id", "tau-value").text == "τ = 0.5"
    assert set(route_tags(browser)) == {"→ DPO"}  # the listed pairs' tags follow τ
    assert browser.find_element("id", "sft-count").text == "110 pairs (11.1%) to SFT"
    assert browser.find_element("id", "dpo-count").text == "885 (88.9%) to DPO"
    line = browser.find_element("id", "routing-line").text
    assert line.endswith(
        "; route drops 4 pairs with chosen = rejected, 1 pair with an empty chosen response"
    )
    colors = browser.execute_script(
        "return document.getElementById('fig-histogram').data[0].marker.color.slice(0, 3)"
    )
    data = json.loads(browser.find_element("id", "page-data").get_attribute("textContent"))
    assert colors == [data["colors"]["sft"], data["colors"]["dpo"], data["colors"]["dpo"]]
    assert errors(browser) == []


def test_text_from_the_data_shows_as_text_and_never_runs(browser, tmp_path):
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    rows = [
        {
            "prompt": hostile,
            "chosen": f"<b>bold?</b> {i}",
            "rejected": "</script><script>window.pwned = 3</script>",
            "score_chosen": 5.0,
            "score_rejected": 5.0 - i % 2,
        }
        for i in range(10)
    ]
    data = tmp_path / "hostile.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    page = write_page(inspect_source(open_pairs(data)), tmp_path / "hostile.html")
    open_page(browser, page)
    assert browser.execute_script("return window.pwned === undefined")
    prompts = browser.find_elements("css selector", "#pairs-list .prompt pre")
    assert prompts and all(p.text == hostile for p in prompts)
    assert browser.find_elements("css selector", "#pairs-list b") == []
    assert errors(browser) == []
