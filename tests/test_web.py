"""The web pages of `snowhub serve`, in a real browser: Debian's headless Chromium driven by Selenium (the system
chromedriver, never a downloaded one) against a real uvicorn server on 127.0.0.1 around a copy of the test hub."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from conftest import strict_ci
from serve_helpers import running
from snowhub import Hub

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _val_images(fashion_dir: Path) -> list[Path]:
    return [sorted(d.glob("*.png"))[0] for d in sorted((fashion_dir / "val").iterdir())]


@pytest.fixture(scope="module")
def site(trained_hub, tmp_path_factory):
    """A server around a module-private copy of the test hub (one test adds a task to it)."""
    hub = tmp_path_factory.mktemp("web") / "hub"
    shutil.copytree(trained_hub, hub)
    with running(hub) as server:
        server.hub = hub
        yield server


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from Debian's packages; Selenium is given both paths, so it never looks online."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        need = "needs Debian's chromium and chromium-driver (bash scripts/chromium.sh installs them)"
        if (why := strict_ci()) is not None:
            pytest.fail(f"{need}; they are missing, and {why} allows no skips", pytrace=False)
        pytest.skip(need)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shown(driver, css: str, timeout_s: float = 120):
    """The elements matching `css` once the page a click or submit led to has them.

    A form POST (the probe check, an upload) can take longer on a busy CI machine than a click waits for, so
    each test waits for what the next page shows instead of reading the page the moment the click returns.
    """
    return WebDriverWait(driver, timeout_s).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def _rows(driver) -> dict[str, dict[str, str]]:
    return {row.get_attribute("data-task"): {cell.get_attribute("data-col"): cell.text
                                             for cell in row.find_elements(By.CSS_SELECTOR, "td[data-col]")}
            for row in driver.find_elements(By.CSS_SELECTOR, "#task-table tbody tr[data-task]")}


def _fits(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_the_hub_page_lists_every_task_with_its_recorded_accuracy(site, browser):
    with Hub.open(site.hub) as hub:
        tasks = hub.tasks()
    browser.get(f"{site.url}/")
    rows = _rows(browser)
    assert list(rows) == [t.name for t in tasks] == ["imagenet", "fashion", "fashion2"]
    for t in tasks:
        shown = "—" if t.val_top1 is None else f"{t.val_top1:.2f} %"
        assert rows[t.name]["val_top1"] == shown and rows[t.name]["val_top5"] == ("—" if t.val_top5 is None
                                                                                   else f"{t.val_top5:.2f} %")
    passes = httpx.get(f"{site.url}/metrics").text
    assert f"snowhub_source_passes_total {float(browser.find_element(By.ID, 'passes').text.replace(',', ''))}" in passes
    assert browser.find_elements(By.TAG_NAME, "script") == []  # the hub page needs no JavaScript

    browser.find_element(By.LINK_TEXT, "val top-1").click()  # sort: a link, the server orders the rows
    WebDriverWait(browser, 120).until(lambda d: "sort=val_top1" in d.current_url)
    ordered = sorted((t for t in tasks if t.val_top1 is not None), key=lambda t: -t.val_top1)
    assert list(_rows(browser)) == [t.name for t in ordered] + ["imagenet"]  # no accuracy: last

    browser.set_window_size(360, 800)
    try:
        browser.get(f"{site.url}/")
        assert _fits(browser), "the hub page is wider than a 360 px screen"
    finally:
        browser.set_window_size(1200, 900)


def test_a_task_page_draws_its_recorded_curve_and_subscriptions(site, browser):
    with Hub.open(site.hub) as hub:
        record, source = hub.registry.get_task("fashion"), hub.source_record()
    history = record.metrics["history"]
    browser.get(f"{site.url}/tasks/fashion")
    top1 = browser.find_elements(By.CSS_SELECTOR, "svg.curve-top1 circle.point")
    assert len(history) == 6 and len(top1) == len(history)
    assert [float(p.get_attribute("data-value")) for p in top1] == [h["val_top1"] for h in history]
    for key in ("train_loss", "val_loss"):
        points = browser.find_elements(By.CSS_SELECTOR, f"svg.curve-loss g[data-key={key}] circle.point")
        assert [float(p.get_attribute("data-value")) for p in points] == [h[key] for h in history]
    assert [li.get_attribute("textContent") for li in browser.find_elements(By.CSS_SELECTOR, "ol.classes li")] \
        == record.class_names
    taps = browser.find_elements(By.CSS_SELECTOR, "#taps tbody tr")
    assert [row.find_elements(By.TAG_NAME, "td")[3].text for row in taps] == \
        [f"{len(record.cp_indices[t['name']])} of {t['channels']}" for t in source.taps]

    browser.set_window_size(360, 800)
    try:
        browser.get(f"{site.url}/tasks/fashion")
        assert _fits(browser), "the task page is wider than a 360 px screen"
    finally:
        browser.set_window_size(1200, 900)


def test_the_probe_verdict_is_run_on_demand_and_kept_with_its_time(site, browser):
    browser.get(f"{site.url}/tasks/fashion2")
    assert browser.find_elements(By.ID, "verdict") == []
    browser.find_element(By.CSS_SELECTOR, "#probe button").click()  # a plain form POST, then a redirect
    # re-run on the CPU and in the numerics environment the probe logits were recorded in
    assert _shown(browser, "#verdict")[0].text == "bit-identical"
    assert "UTC" in browser.find_element(By.ID, "checked").text
    browser.get(f"{site.url}/tasks/fashion")  # one check covers the hub: kept for every task
    assert browser.find_element(By.ID, "verdict").text == "bit-identical"


def test_try_it_answers_every_task_as_hub_predict_and_v1_predict(site, browser, fashion_dir):
    images = _val_images(fashion_dir)
    with Hub.open(site.hub) as hub:
        expected = hub.predict(images, device="cpu")
    api = httpx.post(f"{site.url}/v1/predict", files=[("file", (p.name, p.read_bytes(), "image/png")) for p in images],
                     timeout=60).json()
    browser.get(f"{site.url}/try")
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in images))
    browser.find_element(By.ID, "upload").submit()
    shown = _shown(browser, "#answers article.image")
    assert [a.get_attribute("data-image") for a in shown] == [p.name for p in images]
    for article, want, same in zip(shown, expected, api):
        answers = article.find_elements(By.CSS_SELECTOR, ".task-answer")
        assert [a.get_attribute("data-task") for a in answers] == list(want.tasks) \
            == ["imagenet", "fashion", "fashion2"]
        for answer in answers:
            task = answer.get_attribute("data-task")
            items = answer.find_elements(By.CSS_SELECTOR, "li.answer")
            assert items[0].get_attribute("data-label") == want.tasks[task][0][0]  # top-1 as Hub.predict
            assert [(i.get_attribute("data-label"), float(i.get_attribute("data-probability"))) for i in items] == \
                [(a["label"], a["probability"]) for a in same["tasks"][task]]  # exactly /v1/predict's top-5

    browser.set_window_size(360, 800)
    try:
        assert _fits(browser), "the answers are wider than a 360 px screen"
    finally:
        browser.set_window_size(1200, 900)


def test_images_dropped_on_try_it_are_uploaded_and_answered(site, browser, fashion_dir):
    image = _val_images(fashion_dir)[1]
    api = httpx.post(f"{site.url}/v1/predict", files=[("file", (image.name, image.read_bytes(), "image/png"))],
                     timeout=60).json()
    browser.get(f"{site.url}/try")
    assert browser.find_element(By.CSS_SELECTOR, "#drop .js-only").is_displayed()  # drop.js ran
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dropped = new DataTransfer();
        dropped.items.add(new File([bytes], arguments[1], {type: "image/png"}));
        document.body.dispatchEvent(new DragEvent("drop", {dataTransfer: dropped, bubbles: true, cancelable: true}));
        """, base64.b64encode(image.read_bytes()).decode(), image.name)
    article = _shown(browser, "#answers article.image")[0]
    assert article.get_attribute("data-image") == image.name
    shown = {a.get_attribute("data-task"): a.find_element(By.CSS_SELECTOR, "li.answer").get_attribute("data-label")
             for a in article.find_elements(By.CSS_SELECTOR, ".task-answer")}
    assert shown == {task: answers[0]["label"] for task, answers in api[0]["tasks"].items()}


def test_try_it_shows_the_apis_one_line_error_for_a_text_file(site, browser, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    api = httpx.post(f"{site.url}/v1/predict", files=[("file", (text.name, text.read_bytes(), "text/plain"))])
    assert api.status_code == 400
    browser.get(f"{site.url}/try")
    browser.find_element(By.ID, "files").send_keys(str(text))
    browser.find_element(By.ID, "upload").submit()
    assert _shown(browser, "#error")[0].text == api.json()["error"]
    assert browser.find_elements(By.ID, "answers") == []
    page = httpx.post(f"{site.url}/try", files=[("file", (text.name, text.read_bytes(), "text/plain"))])
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")


def test_a_task_added_by_another_process_appears_on_reload(site, browser, tmp_path):
    bundle = tmp_path / "fashion.snowtask"
    with Hub.open(site.hub) as hub:
        hub.export_task("fashion", bundle)
    browser.get(f"{site.url}/")
    assert "copy" not in _rows(browser)
    add = textwrap.dedent(f"""
        from snowhub import Hub
        with Hub.open({str(site.hub)!r}) as hub:
            hub.import_task({str(bundle)!r}, "copy", allow_unsigned=True)  # unsigned: export_task without a key
        """)
    done = subprocess.run([sys.executable, "-c", add], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    with Hub.open(site.hub) as hub:
        copy = hub.task("copy")
    deadline = time.monotonic() + 10
    while "copy" not in _rows(browser):
        assert time.monotonic() < deadline, "the new task did not appear on reload"
        time.sleep(0.2)
        browser.refresh()
    assert _rows(browser)["copy"]["val_top1"] == f"{copy.val_top1:.2f} %"
    browser.find_element(By.LINK_TEXT, "copy").click()
    lineage = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
               for row in _shown(browser, "#lineage tr")}
    assert lineage["imported_from"] == bundle.name and lineage["name"] == "fashion" and lineage["seq"] == "1"
