"""The page at ``/`` in a real headless Chromium (the system package, driven by Playwright):
upload a demo photo, see it drawn with a box and an edi_code per pill."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_page_is_static_and_self_contained(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'fetch("/v1/predict"' in r.text and "<script src" not in r.text  # no build, no CDN


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists() and not shutil.which("chromium") and not os.environ.get("PILLSNAP_CI"),
    reason="Debian chromium missing: `apt-get install -y chromium` (.ci/run installs it, and "
    "there this test never skips)",
)
def test_page_draws_the_prediction_of_an_uploaded_photo(server, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = server.releases.photos[1]
    expected = httpx.post(
        server.url + "/v1/predict", files={"file": (photo.name, photo.read_bytes())}
    ).json()
    assert len(expected["pills"]) >= 3
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            args=ARGS,
            headless=True,
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function(
                "document.getElementById('model').textContent.includes('model ')"
            )
            assert expected["model_version"] in page.text_content("#model")
            page.set_input_files("#file", str(photo))  # the change event runs the prediction
            page.wait_for_function(
                "document.getElementById('cv').dataset.done === '1'", timeout=60_000
            )
            assert page.get_attribute("#cv", "data-pills") == str(len(expected["pills"]))
            size = page.evaluate(
                "() => [document.getElementById('cv').width, document.getElementById('cv').height]"
            )
            assert size == [480, 640]  # the photo at full size
            rows = page.locator("#pills tbody tr")
            assert rows.count() == len(expected["pills"])
            codes = [rows.nth(i).locator("td").nth(1).text_content() for i in range(rows.count())]
            assert codes == [pill["edi_code"] for pill in expected["pills"]]
            first = expected["pills"][0]
            x1, y1 = (round(v) for v in first["box"][:2])
            # the box outline is drawn in the first colour (#e6194b) at its corner
            px = page.evaluate(
                f"() => Array.from(document.getElementById('cv').getContext('2d')"
                f".getImageData({x1 + 5}, {y1}, 1, 1).data)"
            )
            assert abs(px[0] - 0xE6) < 40 and abs(px[1] - 0x19) < 40 and abs(px[2] - 0x4B) < 40, px
            assert "pill(s)" in page.text_content("#status")
            page.screenshot(path=str(tmp_path / "page.png"))
            # a broken upload shows the API's error, not a blank page
            page.set_input_files(
                "#file", files=[{"name": "x.jpg", "mimeType": "image/jpeg", "buffer": b"junk"}]
            )
            page.wait_for_function("document.getElementById('status').className === 'error'")
            assert "error 400" in page.text_content("#status")
            assert not errors, errors
        finally:
            browser.close()
