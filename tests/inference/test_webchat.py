"""Tests for the web chat page (web/chat.html) in a real headless browser: Debian's chromium driven by
Selenium through chromium-driver, against the real server on a loopback port.

Load the page, set temperature 0, type a message, watch the answer stream in (text appears while
the answer is still streaming), check the final text against `generate` and the tokens/s line,
then Reset. A screenshot is saved to test-artifacts/webchat.png in the repo root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from scratchllm.inference.generation import generate  # noqa: E402
from scratchllm.inference.serve import ServeSettings, create_app  # noqa: E402
from scratchllm.prompts import get_style  # noqa: E402
from scratchllm.tokenizer import Tokenizer  # noqa: E402
from tests.conftest import serving  # noqa: E402
from tests.helpers import sharpened_gpt  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):  # a failure, not a skip: CI must run this test
        pytest.fail("the web page test needs Debian's chromium and chromium-driver: "
                    "sudo apt-get install chromium chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,760",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_web_chat_streams_an_answer_and_resets(browser):
    model = sharpened_gpt(50257, context_length=128, emb_dim=32, n_heads=2)
    tok = Tokenizer.gpt2()
    phi3 = get_style("phi3")
    prompt = phi3.format_chat([{"role": "user", "content": "Hello, model!"}], add_generation_prompt=True)
    want = generate(model, tok, prompt, max_new_tokens=24, temperature=0, stop=phi3.stop_strings)

    # 40 ms per token: the 24-token answer streams for about a second, long enough to see it grow.
    app = create_app((model, tok), ServeSettings(prompt_style="phi3", token_delay=0.04, model_name="tiny-phi3"))
    with serving(app) as port:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 20, poll_frequency=0.02)
        wait.until(lambda d: "tiny-phi3" in d.find_element(By.ID, "model-info").text)
        assert "context 128 tokens" in browser.find_element(By.ID, "model-info").text
        for field, value in (("temperature", "0"), ("max-tokens", "24")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)

        browser.find_element(By.ID, "message").send_keys("Hello, model!", Keys.ENTER)
        # Text appears while the answer is still streaming (the bubble has the `streaming` class).
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant.streaming")
                   and d.find_element(By.CSS_SELECTOR, ".msg.assistant.streaming").text.strip())
        text_now = "return document.querySelector('.msg.assistant').textContent"
        partial = browser.execute_script(text_now)
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".msg.assistant.streaming"))
        final = browser.execute_script(text_now)
        assert final == want.lstrip() and want.lstrip().startswith(partial) and 0 < len(partial) < len(want.lstrip())
        assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == "Hello, model!"
        stats = browser.find_element(By.ID, "stats").text
        assert stats.startswith("24 tokens · ") and " tokens/s · first token after " in stats
        assert stats.endswith("finish: length")
        shot = REPO / "test-artifacts" / "webchat.png"
        shot.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(shot))

        browser.find_element(By.ID, "reset").click()
        assert browser.find_elements(By.CSS_SELECTOR, ".msg.user") == []
        assert browser.find_element(By.CSS_SELECTOR, ".msg.note").text == "conversation reset"
