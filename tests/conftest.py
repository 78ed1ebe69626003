"""Shared fixtures: the real datasets in ../shared/data, tiny configurations, a loopback grid."""

import os
from pathlib import Path
import shutil

import pytest
import torch

from meduniverse.core.config_file import load_config
from meduniverse.interfaces.cli import demo_config_path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDUNIVERSE_SHARED", ROOT.parent / "shared")) / "data"

# Small budgets: every step runs, nothing converges.
TINY = [
    "method.stages=1",
    "method.mim_epochs=1",
    "method.local_epochs=1",
    "method.distill_epochs=1",
    "method.min_steps_per_epoch=1",
    "method.max_steps_per_epoch=2",
    "finetune.max_epochs=2",
    "finetune.patience=1",
    "pool.max_images=96",
    "pool.segmentation_max=16",
]


BROWSERS = ["chromium", "chromium-browser", "google-chrome", "chrome"]


@pytest.fixture(scope="session")
def browser() -> str:
    """A headless Chromium for the browser tests. Without one they are skipped, with the reason in
    the summary, except where the environment sets CI (.ci/run installs Chromium, then requires it).
    """
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    why = (
        f"no headless browser found (tried {', '.join(BROWSERS)}); install Chromium, e.g. "
        "`apt-get install -y chromium` on Debian/Ubuntu (.ci/run does this)"
    )
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "MANIFEST.md").is_file():
        pytest.fail(f"the shared datasets are missing: expected {SHARED} (set MEDUNIVERSE_SHARED)")
    return SHARED


@pytest.fixture
def demo_config():
    return load_config(demo_config_path(), TINY)


@pytest.fixture
def shared8_config(shared_data):
    return load_config(
        ROOT / "configs" / "shared8.toml",
        [*TINY, "model.widths=[8, 16, 32, 64]", f"data_root='{shared_data}'"],
    )
