"""`meduniverse serve`: the web page in a real headless Chromium (Selenium with Debian's
chromium-driver): upload an image, choose a task, see probabilities or a mask; a bad file gives a
clear message; the model card is one click away. MEDUNIVERSE_SCREENSHOTS=DIR saves screenshots (the
README's come from here)."""

import os
from pathlib import Path
import shutil
import socket
import threading

import nibabel
import numpy as np
from PIL import Image
import pytest
from werkzeug.serving import make_server

from meduniverse.core.config_file import load_config
from meduniverse.interfaces.cli import demo_config_path
from meduniverse.interfaces.serve import make_app
from meduniverse.models.io import load_model, save_model
from meduniverse.models.universal import build_model
from meduniverse.results.model_card import card_page

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = load_config(demo_config_path())
    model_dir = tmp_path_factory.mktemp("model")
    save_model(build_model(config, seed=0), config, model_dir, {"stage": 0})
    model, card = load_model(model_dir)
    app = make_app(model, card, card_page(model_dir, card))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = make_server("127.0.0.1", port, app)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    http.shutdown()


@pytest.fixture(scope="module")
def driver(browser):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        why = "no chromedriver (apt-get install -y chromium-driver; .ci/run does this)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield chrome
    chrome.quit()


def submit(driver, server: str, path: Path, task: str) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(server)
    driver.find_element(By.ID, "image").send_keys(str(path))
    Select(driver.find_element(By.ID, "task")).select_by_value(task)
    driver.find_element(By.ID, "submit").click()
    # then wait for the answer page (a loaded machine can take seconds); while the page changes,
    # the browser may answer with an error, which only means "not yet"
    WebDriverWait(driver, 120, ignored_exceptions=(WebDriverException,)).until(
        lambda d: (
            d.current_url.endswith("/predict")
            and d.execute_script("return document.readyState") == "complete"
        )
    )


def shot(driver, name: str) -> None:
    folder = os.environ.get("MEDUNIVERSE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_a_classification_image_gives_probabilities(driver, server, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "chest.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    submit(driver, server, path, "synthetic_xray_nodule")
    cells = driver.find_elements(By.CSS_SELECTOR, "#probabilities td.probability")
    values = [float(c.text) for c in cells]
    assert len(values) == 2 and abs(sum(values) - 1) < 0.01
    shot(driver, "serve_classification")


def test_a_nifti_volume_gives_a_mask_over_the_image(driver, server, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "scan.nii.gz"
    volume = np.random.default_rng(1).integers(0, 1000, (64, 64, 3)).astype(np.int16)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), path)
    submit(driver, server, path, "synthetic_vessel_seg")
    image = driver.find_element(By.ID, "overlay")
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert driver.execute_script("return arguments[0].naturalWidth", image) == 64
    assert "frame 1 of 3" in driver.find_element(By.ID, "result").text
    shot(driver, "serve_segmentation")


def test_a_bad_file_gives_a_clear_message_and_the_card_is_one_click_away(driver, server, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "broken.png"
    path.write_bytes(b"this is not an image")
    submit(driver, server, path, "synthetic_xray_nodule")
    message = driver.find_element(By.ID, "error").text
    assert "broken.png: cannot read image" in message and "/tmp" not in message
    shot(driver, "serve_error")
    driver.find_element(By.ID, "card-link").click()
    assert "Model card" in driver.find_element(By.TAG_NAME, "h1").text
    assert "Intended use" in driver.page_source
