import functools
import warnings

import pytest
import torch

from tests.helpers import random_model, write_run_spec

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
def model():
    return random_model()


@pytest.fixture(scope="module")
def demo():
    """The shipped demo model (trained weights), loaded once per test module."""
    from adasearch import load_model

    return load_model("demo")


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(6, 3, 16, 16)


@pytest.fixture
def make_run(tmp_path):
    """write_run_spec in this test's tmp_path: make_run(space, objectives=..., engine=..., trials=...)."""
    return functools.partial(write_run_spec, tmp_path)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own accuracy cache: nothing leaks into ~/.cache or between tests."""
    monkeypatch.setenv("ADASEARCH_CACHE", str(tmp_path / "cache"))
