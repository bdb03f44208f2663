"""app.py through Streamlit's AppTest (no browser), and through a real browser when one is here.

The browser test drives headless Chromium with Playwright; it runs only when the `playwright`
package and a `chromium` executable are installed (see the README), and is skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, shared, tiny_checkpoint, write_thresholds_json
from config import LABELS

APP = str(ROOT / "app.py")
WAIT_MS = 180_000  # the browser test's wait for each step


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


# ---- a real browser --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit stopped: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not answer at {url} within {seconds} s")


def test_in_a_real_browser(checkpoint, tmp_path):
    """streamlit run app.py, then headless Chromium uploads an X-ray and sees the findings."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium executable (apt-get install chromium)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", APP, "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "CHEXPERT_CHECKPOINT": str(checkpoint)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_server(url, server, seconds=180)
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path=chromium, headless=True,
                args=["--no-sandbox", "--headless", "--disable-gpu",
                      "--disable-background-networking"])
            page = browser.new_page()
            page.goto(url)
            # generous waits: the server imports torch and loads the model on the first visit,
            # and this 2-core machine is often shared
            page.get_by_text("Upload one or more radiographs").wait_for(timeout=WAIT_MS)
            page.locator("input[type=file]").set_input_files(
                str(shared("bad-inputs/images/xray_monochrome2.dcm")))
            page.get_by_text("Grad-CAM heatmap for").wait_for(timeout=WAIT_MS)
            page.locator("[data-testid=stDataFrame]").first.wait_for(timeout=WAIT_MS)
            page.locator("[data-testid=stImage] img").first.wait_for(timeout=WAIT_MS)
            assert page.locator("[data-testid=stException]").count() == 0
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
