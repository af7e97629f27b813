"""`convae explore` (issue 42): the page's numbers are the model's, checked directly and in a real Chromium driven by
Playwright (skipped, saying why, where Gradio, Playwright or Chromium is missing); bad input is a message and the
server keeps serving; a bounded load test on the loopback."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convae
from convae.errors import ConfigError

from conftest import run_cli

gradio = pytest.importorskip("gradio", reason="gradio is not installed (pip install 'convae[explore]')")

from convae.explore import Explorer, as_picture, serve  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def picture_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def explored(seed_run, tmp_path_factory):
    """The seed run (6 epochs on the blobs), its explorer, and two PNGs of test images as a user would upload them."""
    model = convae.load(seed_run, device="cpu")
    folder = tmp_path_factory.mktemp("uploads")
    images = model.run.data().test_images
    files = []
    for k in (0, 1):
        path = folder / f"digit{k}.png"
        Image.fromarray(images[k, 0].numpy()).save(path)
        files.append(path)
    return model, Explorer(model), files


def expected_reconstruction(model, path: Path) -> np.ndarray:
    """What `convae.load(RUN).reconstruct` makes of the file, as the page shows a picture."""
    return as_picture(model.reconstruct(Image.open(path))[0])


# -- the numbers, directly -------------------------------------------------------------------------------------------


def test_the_explorer_reconstructs_moves_and_interpolates_as_the_model_does(explored):
    model, explorer, (a, b) = explored
    seen, reconstruction, said, z = explorer.reconstruct_file(a)
    assert np.array_equal(reconstruction, expected_reconstruction(model, a))
    assert "−ELBO" in said
    # a slider move: the decoder's output for the moved z, and no move gives the reconstruction back
    values = explorer.coordinates(z)
    assert np.array_equal(explorer.slide(z, values), reconstruction)
    values[0] += 1.5
    moved = explorer.moved(z, values)
    assert torch.allclose(moved[0] - torch.tensor(z, dtype=torch.float64),
                          1.5 * explorer.spread[0] * explorer.directions[0], atol=1e-9)
    direct = as_picture(model.model.generate(moved.float())[0])
    assert np.array_equal(explorer.slide(z, values), direct)
    # interpolation: its ends are the two reconstructions, linear and spherical
    for spherical in (False, True):
        strip = explorer.interpolate(a, b, 5, spherical)
        assert len(strip) == 5 and np.array_equal(strip[0], reconstruction)
        assert np.array_equal(strip[-1], expected_reconstruction(model, b))
    # the map: a click on an image's own point gives that image's z decoded
    k = 3
    decoded, original, where = explorer.picked(tuple(explorer.map[k]))
    assert f"test image {k}" in where
    assert np.array_equal(decoded, as_picture(model.model.generate(explorer.means[k:k + 1].float())[0]))
    assert explorer.samples(seed=1).shape[2] == 3 and np.array_equal(explorer.samples(seed=1), explorer.samples(seed=1))


def test_a_file_that_is_not_an_image_or_too_large_is_refused_with_the_reason(explored, tmp_path):
    from test_fourth_hour import png_claiming

    _, explorer, _ = explored
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ConfigError, match="notes.png: not an image Pillow can read"):
        explorer.reconstruct_file(text)
    bomb = tmp_path / "bomb.png"
    png_claiming(bomb, 30_000, 20_000)
    with pytest.raises(ConfigError, match="bomb.png: 30000x20000 = 600 million pixels"):
        explorer.reconstruct_file(bomb)


def test_a_port_in_use_is_one_line_and_the_page_binds_to_this_machine_by_default(seed_run, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, _, err = run_cli(capsys, "explore", str(seed_run), "--port", str(port))
    assert code == 2 and err.count("\n") == 1 and f"--port {port}: in use" in err, err
    code, out, err = run_cli(capsys, "explore", "--help")
    assert code == 0 and "127.0.0.1" in out


# -- in a real browser ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_of(explored):
    """The page served from a thread on a free loopback port, and Chromium (headless) on it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if chromium is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    _, explorer, _ = explored
    port = free_port()
    app = serve(explorer, "127.0.0.1", port, block=False)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#upload input[type=file]", state="attached", timeout=60_000)
            yield page, port
        finally:
            browser.close()
            app.close()


def settles_on(page, element: str, expected: np.ndarray, timeout: float = 60.0) -> np.ndarray:
    """The picture an output shows (fetched as the browser fetched it, a PNG) once it is ``expected`` (PNG rounding
    aside), or the last one it showed: the page may first show the result of an earlier event (the sliders set to
    an upload's z redraw it), and the last event's result is what a user sees."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        image = page.locator(f"#{element} img")
        source = image.first.get_attribute("src") if image.count() else None
        if source:
            last = picture_of(page.request.get(source).body())
            if last.shape == expected.shape and np.abs(last.astype(int) - expected.astype(int)).max() <= 1:
                return last
        time.sleep(0.2)
    if last is None:
        raise AssertionError(f"#{element} showed no picture in {timeout} s")
    return last


def upload(page, element: str, path: Path) -> None:
    """Give the file to an upload box, clearing the one it holds first (as a user would)."""
    clear = page.locator(f"#{element} button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator(f"#{element} input[type=file]").set_input_files(str(path))


def test_the_page_reconstructs_an_upload_and_a_slider_redraws_the_decoders_output(page_of, explored):
    page, _ = page_of
    model, explorer, (a, b) = explored
    upload(page, "upload", a)
    expected = expected_reconstruction(model, a)
    reconstruction = settles_on(page, "reconstruction", expected)
    assert np.abs(reconstruction.astype(int) - expected.astype(int)).max() <= 1

    page.get_by_role("tab", name="Latent sliders").click()
    _, _, _, z = explorer.reconstruct_file(a)
    values = explorer.coordinates(z)
    values[0] = 2.0
    box = page.locator("#slider0 input[type=number]")
    box.fill("2")
    box.press("Enter")
    expected = as_picture(model.model.generate(explorer.moved(z, values).float())[0])
    moved = settles_on(page, "moved", expected)
    assert np.abs(moved.astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(moved.astype(int) - reconstruction.astype(int)).max() > 1  # it moved


def test_the_page_says_what_is_wrong_with_a_bad_upload_and_serves_the_next(page_of, explored, tmp_path):
    page, _ = page_of
    model, _, (a, b) = explored
    page.get_by_role("tab", name="Your image").click()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is no image")
    upload(page, "upload", bad)
    page.get_by_text("This file cannot be used").first.wait_for(timeout=30_000)
    upload(page, "upload", b)
    expected = expected_reconstruction(model, b)
    reconstruction = settles_on(page, "reconstruction", expected)
    assert np.abs(reconstruction.astype(int) - expected.astype(int)).max() <= 1


def test_the_pages_interpolation_ends_at_the_two_reconstructions(page_of, explored):
    page, _ = page_of
    model, explorer, (a, b) = explored
    page.get_by_role("tab", name="Interpolation").click()
    upload(page, "first", a)
    upload(page, "second", b)
    page.locator("#steps input[type=number]").fill("4")
    page.locator("#steps input[type=number]").press("Enter")
    page.locator("#interpolate").click()
    ends = [expected_reconstruction(model, a), expected_reconstruction(model, b)]
    size = ends[0].shape[0]
    expected = np.full((size + 4, 4 * (size + 2) + 2, 3), 255, dtype=np.uint8)  # tile(): 2-px white gaps
    for k, picture in enumerate(explorer.interpolate(a, b, 4)):
        expected[2:2 + size, 2 + k * (size + 2):2 + k * (size + 2) + size] = picture
    strip = settles_on(page, "strip", expected)
    assert np.abs(strip[2:2 + size, 2:2 + size].astype(int) - ends[0].astype(int)).max() <= 1
    last = 2 + 3 * (size + 2)
    assert np.abs(strip[2:2 + size, last:last + size].astype(int) - ends[1].astype(int)).max() <= 1


# -- a bounded load test on the loopback ------------------------------------------------------------------------------


def resident_bytes() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_eight_clients_moving_sliders_get_correct_pictures_and_the_server_does_not_grow(explored, record_property):
    """8 clients, each its own Gradio client, issue slider moves for a bounded time (two rounds of 3 s here;
    benchmarks/explore_load.py runs 30 s per model for docs/performance.md): every picture is the decoder's for that
    z, the p95 latency and the resident memory are reported, and a second round leaves memory where the first did."""
    gradio_client = pytest.importorskip("gradio_client")
    model, explorer, (a, _) = explored
    _, _, _, z = explorer.reconstruct_file(a)
    port = free_port()
    app = serve(explorer, "127.0.0.1", port, block=False)
    try:
        rounds = [load_round(gradio_client, port, explorer, z, clients=8, seconds=3.0) for _ in range(2)]
    finally:
        app.close()
    for latencies, wrong, rss in rounds:
        assert latencies and wrong == 0
    p95 = float(np.percentile(rounds[-1][0], 95))
    record_property("p95_seconds", p95)
    record_property("resident_mb", rounds[-1][2] / 2 ** 20)
    print(f"load: {len(rounds[-1][0])} slider moves by 8 clients in 3 s, p95 {1000 * p95:.0f} ms, resident "
          f"{rounds[0][2] / 2 ** 20:.0f} -> {rounds[1][2] / 2 ** 20:.0f} MB")
    assert rounds[1][2] < rounds[0][2] * 1.10 + 50 * 2 ** 20  # no growth after the first round, within 10 %


def load_round(gradio_client, port: int, explorer: Explorer, z: list[float], clients: int, seconds: float):
    """``clients`` threads moving the first slider to random values for ``seconds``: (latencies, wrong answers,
    resident bytes after)."""
    latencies, wrong = [], []
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        talk = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        while time.monotonic() < stop:
            values = explorer.coordinates(z)
            values[k % len(values)] = float(rng.uniform(-3, 3))
            started = time.perf_counter()
            answer = talk.predict(z, values, api_name="/slide")
            latencies.append(time.perf_counter() - started)
            got = picture_of(base64.b64decode(answer.split(",", 1)[1]))
            if not np.array_equal(got, explorer.slide(z, values)):
                wrong.append(values)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    return latencies, len(wrong), resident_bytes()
