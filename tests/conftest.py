"""Shared pytest configuration: quiet TensorFlow, TF backend, real-data fixtures.

Helpers that are not fixtures live in ``tests/testing.py``; the tiers (markers) are declared in
``pytest.ini``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from testing import DATA_DIR  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    """Root of the real data (LFW, CelebA); tests using it skip when absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data not found at {DATA_DIR} (set KFM_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def lfw_root(data_dir):
    """The LFW folder (``pairs.txt``, ``images/``) of the real data; skips when absent."""
    root = data_dir / "lfw"
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"LFW not found at {root}")
    return root


def pytest_collection_modifyitems(config, items):
    """Every test that reaches the real data through the ``data_dir`` fixture (directly or through
    ``lfw_root`` or another fixture) is in the ``real_data`` tier; tests that read ``DATA_DIR``
    themselves carry the marker explicitly."""
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
