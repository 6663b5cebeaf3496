"""Screenshots of `snowhub serve`'s web pages for docs/serving.md: the hub, a task, and "try it" with answers.

    .venv/bin/python scripts/web_screenshots.py --hub HUB --task NAME --out docs/img IMAGE [IMAGE ...]

Serves HUB with uvicorn on a free port of 127.0.0.1, drives Debian's headless Chromium (``/usr/bin/chromium``
and ``/usr/bin/chromedriver``; bash scripts/chromium.sh installs them) with Selenium, and writes
``web-hub.png``, ``web-task.png`` and ``web-try.png`` (each the whole page at `--width` px) to `--out`.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from snowhub.serving.http import ServeConfig, create_app


def _browser(width: int) -> webdriver.Chrome:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def _shoot(driver: webdriver.Chrome, width: int, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(height, 2400))
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)  # a palette: a third the bytes
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", type=Path, required=True)
    parser.add_argument("--task", required=True, help="the task whose page to show")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--verify", action="store_true", help="press the task page's probe check first")
    parser.add_argument("images", type=Path, nargs="+", help="images to upload on 'try it'")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(args.hub, ServeConfig(device="cpu")), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    driver = _browser(args.width)
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        driver.get(f"{url}/tasks/{args.task}")
        if args.verify:
            driver.find_element(By.CSS_SELECTOR, "#probe button").click()
        driver.get(f"{url}/try")
        driver.find_element(By.ID, "files").send_keys("\n".join(str(p.resolve()) for p in args.images))
        driver.find_element(By.ID, "upload").submit()
        _shoot(driver, args.width, args.out / "web-try.png")
        for name, path in (("web-hub.png", "/"), ("web-task.png", f"/tasks/{args.task}")):
            driver.set_window_size(args.width, 900)
            driver.get(url + path)
            _shoot(driver, args.width, args.out / name)
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=30)


if __name__ == "__main__":
    main()
