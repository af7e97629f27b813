"""The README's picture of `convae explore`: serve a run's page, upload its first test image, and take a screenshot
of each panel with Debian's Chromium (headless). Usage: python scripts/explore-screenshot.py RUN OUT.png"""

import socket
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

import convae
from convae.explore import Explorer, serve

run, out = sys.argv[1], Path(sys.argv[2])
model = convae.load(run, device="cpu")
digit = Path(tempfile.mkdtemp()) / "test-image-0.png"
Image.fromarray(model.run.data().test_images[0, 0].numpy()).save(digit)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
app = serve(Explorer(model), "127.0.0.1", port, block=False)
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1100, "height": 620})
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#upload input[type=file]", state="attached")
    page.locator("#upload input[type=file]").set_input_files(str(digit))
    page.wait_for_selector("#reconstruction img")
    time.sleep(2)
    page.screenshot(path=str(out))
    page.get_by_role("tab", name="Latent sliders").click()
    box = page.locator("#slider0 input[type=number]")
    box.fill("2.5")
    box.press("Enter")
    time.sleep(3)
    page.screenshot(path=str(out.with_name(out.stem + "-sliders.png")), full_page=True)
    browser.close()
app.close()
print(out)
