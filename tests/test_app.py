"""app.py through Streamlit's AppTest (no browser), and through a real browser when one is here.

The browser test drives headless Chromium with Playwright; it runs only when the `playwright`
package and a `chromium` executable are installed (see docs/inference.md), and is skipped otherwise,
except in CI (CXR_REQUIRE_BROWSER=1, set by .ci/run), where it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import ROOT, SHARED_DATA, add_input_gate, photograph, shared, tiny_checkpoint, \
    write_thresholds_json
from cxr.data.labels import LABELS

APP = str(ROOT / "app.py")
WAIT_MS = 180_000  # the browser test's longest wait for any one step (the first loads torch)


@pytest.fixture(autouse=True)
def keep_main_module():
    """AppTest leaves app.py as sys.modules["__main__"]: a multiprocessing pool spawned by a later
    test (cache.py's) would then run the page in each worker. Put the real one back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("app") / "run" / "best.pth")


def start(checkpoint, monkeypatch) -> AppTest:
    monkeypatch.setenv("CHEXPERT_CHECKPOINT", str(checkpoint))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def app(checkpoint, monkeypatch):
    return start(checkpoint, monkeypatch)


def upload(at: AppTest, *names: str) -> AppTest:
    files = [(name, shared(f"bad-inputs/images/{name}").read_bytes(), "application/octet-stream")
             for name in names]
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, at.exception
    return at


def test_starts_with_the_checkpoint_and_asks_for_images(app, checkpoint):
    assert app.text_input[0].value == str(checkpoint)
    assert any("Upload one or more radiographs" in info.value for info in app.info)
    assert any("thresholds.json not found" in warning.value for warning in app.warning)


def test_one_image_sorted_findings_and_heatmap(app):
    upload(app, "xray_monochrome1.dcm")
    findings = app.dataframe[0].value
    assert list(findings.columns) == ["finding", "probability", "threshold", "decision"]
    assert sorted(findings["finding"]) == sorted(LABELS)
    assert findings["probability"].is_monotonic_decreasing
    assert set(findings["decision"]) <= {"positive", "negative"}
    heatmap_choice = [box for box in app.selectbox if box.label == "Grad-CAM heatmap for"][0]
    assert heatmap_choice.value == findings["finding"][0]  # the most probable one first
    heatmap_choice.set_value("Cardiomegaly").run()
    assert not app.exception and not app.error
    captions = [caption for image in app.get("image") for caption in image.captions]
    assert len(captions) == 1 and captions[0].startswith("Cardiomegaly: probability")


def test_untrained_labels_say_not_trained(tmp_path, monkeypatch):
    """An NIH-like checkpoint (trained_labels without Fracture and Support Devices): no
    probability, decision or heatmap for them, "not trained" instead."""
    untrained = {"Fracture", "Support Devices"}
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth",
                                 trained_labels=[l for l in LABELS if l not in untrained])
    at = upload(start(checkpoint, monkeypatch), "xray_monochrome1.dcm")
    assert any("not trained: Fracture, Support Devices" in w.value for w in at.warning)
    findings = at.dataframe[0].value
    assert sorted(findings["finding"]) == sorted(LABELS)
    marked = findings[findings["decision"] == "not trained"]
    assert set(marked["finding"]) == untrained and marked["probability"].isna().all()
    assert findings["finding"].tolist()[-2:] == sorted(untrained)  # after the sorted ones
    heatmap_choice = [box for box in at.selectbox if box.label == "Grad-CAM heatmap for"][0]
    assert not untrained & set(heatmap_choice.options)
    upload(at, "gray16_xray.png", "xray_monochrome2.dcm")
    batch = at.dataframe[0].value
    assert (batch["Fracture"] == "not trained").all()
    assert not batch["positive findings"].str.contains("Fracture").any()


def test_batch_table_download_and_bad_uploads(app):
    upload(app, "gray16_xray.png", "not_an_image.jpg", "xray_monochrome2.dcm", "empty.jpg")
    errors = [error.value for error in app.error]
    assert len(errors) == 2 and "Traceback" not in " ".join(errors)
    assert any("not_an_image.jpg" in e and "cannot identify an image format" in e for e in errors)
    assert any("empty.jpg" in e and "empty (0 bytes)" in e for e in errors)
    batch = app.dataframe[0].value
    assert batch["path"].tolist() == ["gray16_xray.png", "xray_monochrome2.dcm"]
    assert "positive findings" in batch.columns and set(LABELS) <= set(batch.columns)
    assert [button.label for button in app.get("download_button")] == \
        ["Download the results (CSV)"]
    picker = [box for box in app.selectbox if box.label == "Radiograph"][0]
    picker.set_value(1).run()
    assert not app.exception
    assert app.dataframe[1].value["finding"].tolist() != []


def test_a_broken_checkpoint_is_a_message(app, tmp_path):
    broken = tmp_path / "best.pth"
    broken.write_bytes(b"not a checkpoint")
    app.text_input[0].set_value(str(broken)).run()
    assert not app.exception
    assert any("Cannot use checkpoint" in error.value for error in app.error)
    app.text_input[0].set_value(str(tmp_path / "nowhere.pth")).run()
    assert any("not found" in error.value for error in app.error)


def test_a_study_model_fuses_the_uploads_as_one_study(tmp_path, monkeypatch):
    study = tiny_checkpoint(tmp_path / "study" / "best.pth", view_mode="study",
                            view_fusion="attention", max_views=2)
    monkeypatch.setenv("CHEXPERT_CHECKPOINT", str(study))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    upload(at, "gray16_xray.png", "xray_monochrome2.dcm", "rgba_xray.png")
    assert [header.value for header in at.subheader][0] == "The uploads as one study"
    caption = [c.value for c in at.caption if "fuses a study's views" in c.value][0]
    assert "gray16_xray.png; rgba_xray.png" in caption and "Left out: xray_monochrome2.dcm" in caption
    fused = at.dataframe[0].value
    assert sorted(fused["finding"]) == sorted(LABELS) and fused["probability"].between(0, 1).all()
    assert at.dataframe[1].value["path"].tolist() == ["gray16_xray.png", "xray_monochrome2.dcm",
                                                      "rgba_xray.png"]  # each on its own too


def test_a_rewritten_thresholds_file_is_read_again(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth")
    write_thresholds_json(checkpoint, thresholds={label: 0.3 for label in LABELS})
    at = upload(start(checkpoint, monkeypatch), "gray16_xray.png")
    assert set(at.dataframe[0].value["threshold"]) == {0.3}
    write_thresholds_json(checkpoint, thresholds={label: 0.7 for label in LABELS},
                          calibration={label: {"scale": 1.0, "bias": 1.0} for label in LABELS})
    os.utime(checkpoint.parent / "thresholds.json", (time.time() + 5, time.time() + 5))
    at.run()
    findings = at.dataframe[0].value
    assert set(findings["threshold"]) == {0.7}  # the GUI's cache keys on thresholds.json too


def test_thresholds_of_other_weights_or_tta_are_refused(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth")
    write_thresholds_json(checkpoint, model_id="0" * 16)
    at = start(checkpoint, monkeypatch)
    assert any("fitted for other weights" in e.value and "evaluate.py" in e.value
               for e in at.error)
    write_thresholds_json(checkpoint, tta=True)
    at.run()
    assert any("--tta true" in e.value for e in at.error)
    at.checkbox(key="tta").check().run()  # the sidebar's test-time augmentation
    assert not at.error and not at.exception
    assert any("test-time augmentation" in c.value for c in at.caption)


def test_a_lateral_upload_is_flagged_for_a_frontal_model(tmp_path, monkeypatch):
    import pydicom

    dataset = pydicom.dcmread(shared("bad-inputs/images/xray_monochrome2.dcm"))
    dataset.ViewPosition = "LL"
    lateral = tmp_path / "lateral.dcm"
    dataset.save_as(lateral)
    at = start(tiny_checkpoint(tmp_path / "run" / "best.pth"), monkeypatch)
    at.file_uploader[0].set_value([("lateral.dcm", lateral.read_bytes(),
                                    "application/octet-stream")]).run()
    assert not at.exception
    assert any("look lateral" in w.value and "lateral.dcm" in w.value for w in at.warning)
    at.file_uploader[0].set_value([
        ("lateral.dcm", lateral.read_bytes(), "application/octet-stream"),
        ("view1_frontal.png", shared("bad-inputs/images/gray16_xray.png").read_bytes(),
         "image/png")]).run()
    assert at.dataframe[0].value["view"].tolist() == ["lateral", "frontal"]  # the batch table


def test_a_film_outside_the_training_distribution_gets_a_banner(tmp_path, monkeypatch):
    """The input gate's verdict above the findings: a photograph gets the banner, a radiograph
    does not; in a batch, the table says which."""
    checkpoint = tiny_checkpoint(tmp_path / "run" / "best.pth")
    write_thresholds_json(checkpoint)
    xray = shared("bad-inputs/images/gray16_xray.png")
    camera = photograph(tmp_path / "camera.png")
    add_input_gate(checkpoint, [xray, shared("bad-inputs/images/xray_monochrome2.dcm")],
                   [camera])
    at = start(checkpoint, monkeypatch)
    at.file_uploader[0].set_value([("camera.png", camera.read_bytes(), "image/png")]).run()
    assert not at.exception, at.exception
    assert any("Outside the training distribution" in e.value for e in at.error)
    at.file_uploader[0].set_value([("xray.png", xray.read_bytes(), "image/png")]).run()
    assert not any("Outside the training distribution" in e.value for e in at.error)
    at.file_uploader[0].set_value([("xray.png", xray.read_bytes(), "image/png"),
                                   ("camera.png", camera.read_bytes(), "image/png")]).run()
    assert any("1 of 2 uploads lie outside" in e.value for e in at.error)
    assert at.dataframe[0].value["in_distribution"].tolist() == ["true", "false"]


# ---- a real browser --------------------------------------------------------------------------------
# `streamlit run app.py` driven by headless Chromium through Playwright. Skipped without the
# `playwright` package or a `chromium` executable, except under CXR_REQUIRE_BROWSER=1 (.ci/run
# sets it), where that is a failure. The screenshot goes to tmp_path, and also to
# $CXR_SCREENSHOT_DIR when set: CXR_SCREENSHOT_DIR=docs makes docs/inference.md's docs/app_browser.png
# and docs/app_outside.png.

REQUIRE_BROWSER = "CXR_REQUIRE_BROWSER"
SCREENSHOT_DIR = "CXR_SCREENSHOT_DIR"
SCREENSHOT = "app_browser.png"
OUTSIDE_SCREENSHOT = "app_outside.png"  # a photograph, under the input gate's banner
VIEWPORT = {"width": 1280, "height": 1440}  # a batch page fits without scrolling
ROW_PX = 35  # app.py's ROW_PX: the findings table's row height, in pixels
BROWSER_THRESHOLDS = {label: 0.3 if i % 2 else 0.7 for i, label in enumerate(LABELS)}


def browser_or_skip():
    """(playwright.sync_api, the chromium executable), or a skip: a failure under
    CXR_REQUIRE_BROWSER=1."""
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = []
    if sync_api is None:
        missing.append("playwright package (pip install -r requirements.txt)")
    if chromium is None:
        missing.append("chromium executable (apt-get install chromium)")
    if missing:
        message = "no " + " and no ".join(missing)
        if os.environ.get(REQUIRE_BROWSER) == "1":
            pytest.fail(f"{message}, and {REQUIRE_BROWSER}=1 requires the browser test")
        pytest.skip(message)
    return sync_api, chromium


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit stopped:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not answer at {url} within {seconds} s:\n"
                         f"{log.read_text()}")


@contextlib.contextmanager
def streamlit_server(folder: Path, checkpoint: str):
    """`streamlit run app.py` in `folder` on a free port: its URL. Stopped on the way out, killed
    if it does not stop."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "streamlit.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", APP, "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
             "--client.toolbarMode", "minimal"],
            cwd=folder, env={**os.environ, "CHEXPERT_CHECKPOINT": checkpoint},
            stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_for_server(url, server, log, seconds=WAIT_MS / 1000)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def chest_like(side: int = 256) -> np.ndarray:
    """Pixels to upload: a bright body with two dark lung fields (a stand-in for a radiograph)."""
    y, x = np.mgrid[0:side, 0:side] / side
    image = 0.85 - 0.6 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    for centre in (0.32, 0.68):
        image[((x - centre) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = 0.3
    return (255 * image).astype(np.uint8)


def open_app(browser, url: str):
    """A new session (an empty uploader) once the app asks for images."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.get_by_text("Upload one or more radiographs").wait_for()
    return page


def grid_cells(grid) -> list[list[str]]:
    """The rows st.dataframe has drawn, as text: its canvas keeps them in an accessible table."""
    grid.locator("td").first.wait_for(state="attached")
    return grid.locator("tbody tr").evaluate_all(
        "rows => rows.map(row => Array.from(row.cells, cell => cell.textContent))")


def check_findings(page, name: str) -> list[list[str]]:
    """Radiograph `name`: its 14 findings in view, most probable first, each decided at its
    threshold; its Grad-CAM overlay, for the first. Returns the findings table's rows."""
    page.locator("h3").filter(has_text=name).wait_for()
    grid = page.get_by_test_id("stDataFrame").filter(
        has=page.locator("th", has_text="decision"))
    rows = grid_cells(grid)
    # No finding scrolled out of view: the accessible table holds only the rows the grid draws
    # (those in view and a row or so beyond: 12 of the 14 at st.dataframe's default height),
    # and the grid's box holds the header and 14 rows, inside the window.
    assert sorted(finding for finding, *_ in rows) == sorted(LABELS)
    assert all(len(cells) == 4 for cells in rows)
    box = grid.bounding_box()
    assert box["height"] >= (len(LABELS) + 1) * ROW_PX
    assert box["y"] + box["height"] <= VIEWPORT["height"]
    probabilities = [float(p) for _, p, _, _ in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    for finding, probability, threshold, decision in rows:
        assert float(threshold) == BROWSER_THRESHOLDS[finding]
        assert decision == ("positive" if float(probability) >= float(threshold) else "negative")
    assert {decision for *_, decision in rows} == {"positive", "negative"}
    overlay = page.get_by_test_id("stImage").locator("img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=overlay.element_handle())
    assert page.get_by_test_id("stImageCaption").inner_text().startswith(
        f"{rows[0][0]}: probability")
    assert page.get_by_test_id("stException").count() == 0
    return rows


def test_in_a_real_browser(tmp_path):
    """streamlit run app.py; headless Chromium uploads a JPEG, a DICOM, then a batch of three and
    an unreadable file, and checks what the page shows and the CSV it downloads."""
    sync_api, chromium = browser_or_skip()
    checkpoint = tiny_checkpoint(tmp_path / "models" / "random-weights" / "best.pth")
    write_thresholds_json(checkpoint, thresholds=BROWSER_THRESHOLDS)
    jpeg, png = tmp_path / "chest.jpg", tmp_path / "chest.png"
    unreadable = tmp_path / "not_an_image.jpg"
    Image.fromarray(chest_like()).save(jpeg, quality=90)
    Image.fromarray(chest_like()[:, ::-1]).save(png)
    unreadable.write_text("these are not pixels")
    dicom = SHARED_DATA / "bad-inputs" / "images" / "xray_monochrome2.dcm"
    if dicom.is_file():
        singles, batch = [jpeg, dicom], [dicom, jpeg, png]
    else:  # without ../shared/data, the test goes on without its DICOM
        Image.fromarray(chest_like()[::-1]).save(tmp_path / "other.jpg")
        singles, batch = [jpeg], [tmp_path / "other.jpg", jpeg, png]
    camera = photograph(tmp_path / "camera.png")
    add_input_gate(checkpoint, list(dict.fromkeys([*singles, *batch])), [camera])
    # the checkpoint path as a user types it, from the folder the app runs in
    with streamlit_server(tmp_path, "models/random-weights/best.pth") as url, \
            sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--headless", "--disable-gpu",
                  "--disable-background-networking"])
        for single in singles:
            page = open_app(browser, url)
            page.locator("input[type=file]").set_input_files(str(single))
            check_findings(page, single.name)
            assert page.get_by_test_id("stAlertContentError").count() == 0
            page.close()

        page = open_app(browser, url)
        page.locator("input[type=file]").set_input_files(
            [str(path) for path in [*batch, unreadable]])
        page.locator("h3").filter(has_text="3 radiographs").wait_for()
        errors = page.get_by_test_id("stAlertContentError").all_inner_texts()
        assert len(errors) == 1 and "not_an_image.jpg" in errors[0] \
            and "cannot identify an image format" in errors[0]
        batch_grid = page.get_by_test_id("stDataFrame").filter(
            has=page.locator("th", has_text="positive findings"))
        assert [cells[0] for cells in grid_cells(batch_grid)] == [p.name for p in batch]
        findings = check_findings(page, batch[0].name)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download the results (CSV)").click()
        table = pd.read_csv(download.value.path())
        assert table["path"].tolist() == [p.name for p in batch]
        assert {*LABELS, *(f"{label} positive" for label in LABELS)} <= set(table.columns)
        for finding, probability, _, decision in findings:  # the CSV says what the page shows
            assert table[finding][0] == pytest.approx(float(probability))
            assert table[f"{finding} positive"][0] == (decision == "positive")
        page.screenshot(path=str(tmp_path / SCREENSHOT))
        page.close()

        page = open_app(browser, url)  # a photograph: the banner above its findings
        page.locator("input[type=file]").set_input_files(str(camera))
        page.locator("h3").filter(has_text=camera.name).wait_for()
        banner = page.get_by_test_id("stAlertContentError")
        banner.wait_for()
        assert "Outside the training distribution. This image is unlike" in banner.inner_text()
        findings = page.get_by_test_id("stDataFrame").filter(
            has=page.locator("th", has_text="decision"))
        assert banner.bounding_box()["y"] < findings.bounding_box()["y"]
        overlay = page.get_by_test_id("stImage").locator("img")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=overlay.element_handle())
        page.screenshot(path=str(tmp_path / OUTSIDE_SCREENSHOT))
        if os.environ.get(SCREENSHOT_DIR):
            folder = Path(os.environ[SCREENSHOT_DIR])
            folder.mkdir(parents=True, exist_ok=True)
            for name in (SCREENSHOT, OUTSIDE_SCREENSHOT):
                shutil.copy(tmp_path / name, folder / name)
        browser.close()
