"""The recorded environment, device names and thread counts."""

import json
import socket

import pytest
import torch

from adasearch import UserError
from adasearch.measure.environment import DTYPES, environment, resolve_device, resolve_dtype, set_threads

CPU = torch.device("cpu")


def test_environment_records_software_and_threads_without_hostname():
    env = environment("cpu", None)
    assert env["torch"] == torch.__version__
    assert env["threads"] == torch.get_num_threads() and env["threads_requested"] is None
    assert env["device"] == "cpu" and env["device_name"]
    assert env["python"] and env["os"]
    assert socket.gethostname() not in json.dumps(env)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="not known; allowed here: auto, cpu"):
        resolve_device("bogus")
    with pytest.raises(UserError, match="cuda:99"):
        resolve_device("cuda:99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_resolve_device_refuses_missing_cuda():
    with pytest.raises(UserError, match=r"torch.cuda.is_available\(\) is False\); allowed here: auto, cpu"):
        resolve_device("cuda")


def test_set_threads():
    before = torch.get_num_threads()
    try:
        set_threads(None)
        assert torch.get_num_threads() == before
        set_threads(1)
        assert torch.get_num_threads() == 1
        for bad in (0, -2, 1.5, True):
            with pytest.raises(UserError, match="positive integer"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_one_dtype_map_for_measuring_and_serving():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and list(DTYPES) == ["float32", "bfloat16", "float16"]
    with pytest.raises(UserError, match="dtype 'int8' is not allowed: one of"):
        resolve_dtype("int8")
