"""The page at `/` in a real browser: headless Chromium (Debian's package) driven by
selenium types a prompt, clicks Generate, and gets a playable WAV of the asked duration.

Needs `chromium` and `chromium-driver` (.ci/run installs them); set
ENERGYTTA_SKIP_BROWSER=1 to skip where no browser can be installed.
"""
from __future__ import annotations

import os
import shutil
import struct

import pytest

from energytta.pipeline import TextToAudio
from energytta.serve.engine import Engine
from serve_util import running

pytestmark = pytest.mark.skipif(os.environ.get("ENERGYTTA_SKIP_BROWSER") == "1",
                                reason="ENERGYTTA_SKIP_BROWSER=1")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")
READ_WAV_HEADER = """
const done = arguments[arguments.length - 1];
fetch(arguments[0].src).then(r => r.arrayBuffer())
  .then(b => done(Array.from(new Uint8Array(b.slice(0, 44)))), e => done(String(e)));
"""


def _browser(profile):
    """Headless Chromium from the system's packages, a fresh profile, no network extras."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert chromium and driver, ("the browser test needs Debian's chromium and chromium-driver "
                                 "(apt-get install -y chromium chromium-driver), or set "
                                 "ENERGYTTA_SKIP_BROWSER=1")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_generates_a_playable_wav_of_the_asked_duration(tiny_ckpts, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pipe = TextToAudio.from_pretrained(tiny_ckpts["student"], device="cpu")
    with running(Engine(pipe, "student")) as srv:
        browser = _browser(tmp_path / "profile")
        try:
            browser.set_script_timeout(30)
            browser.get(srv.url)
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#model option"))
            browser.find_element(By.ID, "prompt").send_keys("a dog barks twice")
            duration = browser.find_element(By.ID, "duration")
            duration.clear()
            duration.send_keys("1.2")
            browser.find_element(By.ID, "seed").send_keys("7")
            browser.find_element(By.ID, "go").click()
            audio = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#results audio"))
            wait.until(lambda b: b.execute_script("return arguments[0].readyState >= 1", audio))
            seconds = browser.execute_script("return arguments[0].duration", audio)
            header = bytes(browser.execute_async_script(READ_WAV_HEADER, audio))
            status = browser.find_element(By.ID, "status").text
            canvas_width = browser.find_element(By.CSS_SELECTOR, "#results canvas").size["width"]
            name = browser.find_element(By.CSS_SELECTOR, "#results a[download]"
                                        ).get_attribute("download")
            shot = tmp_path / "serve_page.png"
            assert browser.save_screenshot(str(shot))
        finally:
            browser.quit()
    assert status.startswith("done"), status
    assert abs(seconds - 1.2) < 0.01
    assert header[:4] == b"RIFF" and header[8:12] == b"WAVE"
    channels, rate = struct.unpack("<HI", header[22:28])
    assert (channels, rate) == (1, 16000)
    assert canvas_width > 0 and name.endswith(".wav") and "seed7" in name
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("ENERGYTTA_SCREENSHOT"):  # docs/img/serve_page.png is made this way
        shutil.copy(shot, os.environ["ENERGYTTA_SCREENSHOT"])
