"""What a real browser loads from the service's pages: headless Chromium (through selenium and
chromedriver) opens `/` and `/docs` of a running server, waits until each has drawn what it
fetches (the model's card; Swagger UI's operations), and lists every request the page made,
every console message (a Content-Security-Policy violation is one) and whether the page drew.
Exits 1 if a page requested anything from another origin, logged an error, or did not draw.

    bentoml serve &                                  # in the project root, after dvc repro
    python bench/pages.py http://127.0.0.1:3000      # --screenshots DIR: a PNG of each page

Needs Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

# what shows that a page has drawn from what it fetched (the model card's classes; Swagger UI's
# operations), and what is then clicked (each operation of Swagger UI opened, and its "Try it out")
DRAWN = {
    "/": "document.getElementById('classes').textContent !== ''",
    "/docs": "document.querySelector('.opblock') !== null",
}
CLICKED = {"/docs": [".opblock-summary-control", ".try-out__btn"]}


def browser(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,1400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def visit(
    driver: webdriver.Chrome, url: str, drawn_when: str, clicked: list[str], timeout: float = 30
) -> dict:
    driver.get("about:blank")
    driver.get_log("performance")  # what the browser loaded before (its own new-tab page)
    driver.get_log("browser")
    driver.get(url)
    deadline = time.monotonic() + timeout
    drawn = False
    while time.monotonic() < deadline and not drawn:
        drawn = bool(driver.execute_script(f"return {drawn_when}"))
        time.sleep(0.2)
    for target in clicked:
        for element in driver.find_elements(By.CSS_SELECTOR, target):
            driver.execute_script("arguments[0].click()", element)
            time.sleep(0.1)
    time.sleep(1)  # anything the page loads after drawing
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    console = [f"{e['level']}: {e['message']}" for e in driver.get_log("browser")]
    return {"drawn": drawn, "requests": requests, "console": console}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the service, e.g. http://127.0.0.1:3000")
    parser.add_argument("--screenshots", type=Path, help="a folder for a PNG of each page")
    args = parser.parse_args()
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(args.url))
    failed = False
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        driver = browser(Path(profile))
        try:
            for path, drawn_when in DRAWN.items():
                seen = visit(driver, origin + path, drawn_when, CLICKED.get(path, []))
                foreign = [u for u in seen["requests"] if not u.startswith((origin + "/", "data:"))]
                errors = [c for c in seen["console"] if c.startswith("SEVERE")]
                print(
                    f"{path}: drawn {seen['drawn']}, {len(seen['requests'])} requests, "
                    f"{len(foreign)} to another origin, {len(errors)} console errors"
                )
                for line in [*(f"  request {u}" for u in seen["requests"]), *seen["console"]]:
                    print(f"  {line}" if not line.startswith("  ") else line)
                if args.screenshots:
                    args.screenshots.mkdir(parents=True, exist_ok=True)
                    name = "index" if path == "/" else path.strip("/")
                    driver.save_screenshot(str(args.screenshots / f"{name}.png"))
                failed |= bool(foreign or errors or not seen["drawn"])
        finally:
            driver.quit()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
