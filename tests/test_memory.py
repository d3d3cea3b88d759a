"""Peak memory of one forward on CPU: the live-tensor tracker against real allocations."""

import pytest
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from adasearch import DeploymentConfig
from adasearch.measure.memory import MIB, LiveTensorBytes, peak_memory_mb
from tests.helpers import random_model

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- peak memory on CPU


class Scratch(nn.Module):
    """A forward whose only big tensors are `n_big` temporary 4 MB vectors, each reduced and dropped."""

    def __init__(self, n_big):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.n_big = n_big

    def run(self, x, config):
        for _ in range(self.n_big):
            x = x + torch.ones(1_000_000).sum()  # 4 MB alive only on this line
        return self.lin(x)


def model_bytes(model, batch):
    return sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers(), batch])


def test_cpu_peak_sees_a_temporary_and_its_release():
    batch = torch.randn(2, 8)
    one = peak_memory_mb(Scratch(1), None, batch, "cpu")
    assert one["method"].startswith("cpu: parameters + peak live tensor bytes")
    base = model_bytes(Scratch(1), batch)
    assert one["peak_mb"] * MIB >= base + 4_000_000
    assert one["peak_mb"] * MIB < base + 4_000_000 + 4096  # nothing else big is invented
    # Three temporaries one after another: each is freed before the next, so they never add up.
    assert peak_memory_mb(Scratch(3), None, batch, "cpu")["peak_mb"] * MIB < base + 4_000_000 + 4096


def test_cpu_peak_grows_with_tokens(images):
    model = random_model()
    small = peak_memory_mb(model, DeploymentConfig(num_tokens=4), images, "cpu")["peak_mb"]
    large = peak_memory_mb(model, DeploymentConfig(num_tokens=64), images, "cpu")["peak_mb"]
    assert large > small > model_bytes(model, images) / MIB


class StoragePoller(TorchDispatchMode):
    """Reference tracker: after each op, asks the C++ storages themselves whether they are still alive.
    It also sees references held only by C++, which Python weakrefs on tensor objects could miss."""

    def __init__(self, pinned):
        super().__init__()
        self.pinned = {t.untyped_storage().data_ptr() for t in pinned}
        self.alive, self.peak = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.alive = {ref: n for ref, n in self.alive.items() if not ref.expired()}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                if s.nbytes() and s.data_ptr() not in self.pinned:
                    self.alive[StorageWeakRef(s)] = s.nbytes()
        self.peak = max(self.peak, sum(self.alive.values()))
        return out


@pytest.mark.parametrize(
    "config",
    [
        DeploymentConfig(),
        DeploymentConfig(num_tokens=64, mat_dim=16),
        DeploymentConfig(num_tokens=[16, 8, 8, 4], depth_tau=0.3),
    ],
)
def test_weakref_tracker_agrees_with_storage_liveness(config, images):
    model = random_model()
    with torch.no_grad():
        model.run(images, config)  # the model's tables (masks) are built once, here, not in either window
    pinned = [*model.parameters(), *model.buffers(), images]
    peaks = []
    for tracker in (LiveTensorBytes(pinned), StoragePoller(pinned)):
        with torch.no_grad(), tracker:
            model.run(images, config)
        peaks.append(tracker.peak)
    assert peaks[0] == peaks[1] > 0
