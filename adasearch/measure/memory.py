"""Peak memory of one forward under a DeploymentConfig. MB here means MiB (2**20 bytes).

CUDA has an allocator counter (torch.cuda.max_memory_allocated); the CPU allocator has none, so on
other devices the peak is reconstructed from the tensors themselves:

    peak = bytes of the model's parameters and buffers and of the input batch
         + the highest total of bytes held by op outputs alive at the same time during the forward

`LiveTensorBytes`, a TorchDispatchMode, sees the output of every aten op. It counts a storage once,
keyed by its data pointer (views share it), and forgets it when the last op output on that storage
is garbage, via weakref.finalize on each output. The peak is taken after each op's outputs exist,
so it has op granularity. It cannot see memory that never becomes a tensor: allocator slack and
rounding, a kernel's private scratch (a fused attention kernel's tiles), the Python heap.

The forward runs under no_grad, not inference_mode: the allocations are the same, but with autograd
keys active, composite ops (matmul with broadcasting, the SDPA dispatcher, cov...) decompose before
the mode sees them, so their intermediates are counted instead of hiding inside one "op".
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MIB = 2**20
CPU_METHOD = "parameters + peak live tensor bytes seen by a dispatch mode (excludes allocator slack and kernel scratch)"
CUDA_METHOD = "cuda: torch.cuda.max_memory_allocated over one forward (weights, input and activations)"


def _storage(t: torch.Tensor):
    """(data pointer, bytes) of the memory block under t; views of one tensor give the same pair."""
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class LiveTensorBytes(TorchDispatchMode):
    """Tracks bytes held by op outputs while active. `pinned` tensors (weights, input) are counted
    in `baseline` once and their views are never counted again."""

    def __init__(self, pinned=()):
        super().__init__()
        self.pinned = {}
        for t in pinned:
            ptr, nbytes = _storage(t)
            self.pinned[ptr] = nbytes
        self.baseline = sum(self.pinned.values())
        self.live = 0  # bytes of the storages in `owners`
        self.peak = 0  # highest `live` seen
        self.owners = {}  # data pointer -> [bytes, number of tracked outputs still alive on it]
        self.finalizers = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        self.peak = max(self.peak, self.live)
        return out

    def _track(self, t: torch.Tensor):
        ptr, nbytes = _storage(t)
        if nbytes == 0 or ptr in self.pinned:
            return
        owner = self.owners.get(ptr)
        if owner is None:
            self.owners[ptr] = [nbytes, 1]
            self.live += nbytes
        else:
            owner[1] += 1
        # The callback holds the key, never t itself, or t would stay alive forever.
        self.finalizers.append(weakref.finalize(t, self._release, ptr))

    def _release(self, ptr: int):
        owner = self.owners[ptr]
        owner[1] -= 1
        if owner[1] == 0:
            self.live -= owner[0]
            del self.owners[ptr]

    def __exit__(self, *exc):
        # Tensors that outlive the forward (the logits) must not call back into a finished tracker.
        for f in self.finalizers:
            f.detach()
        return super().__exit__(*exc)


def peak_memory_mb(model, config, batch: torch.Tensor, device) -> dict:
    """Peak memory in MiB of model.run(batch, config) on `device` (the model must already be there).

    Returns {"peak_mb": float, "method": str}; the method says what the number includes.
    """
    device = torch.device(device)
    batch = batch.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            model.run(batch, config)
        torch.cuda.synchronize(device)
        return {"peak_mb": torch.cuda.max_memory_allocated(device) / MIB, "method": CUDA_METHOD}
    pinned = [*model.parameters(), *model.buffers(), batch]
    with torch.no_grad(), LiveTensorBytes(pinned) as tracker:
        model.run(batch, config)
    return {"peak_mb": (tracker.baseline + tracker.peak) / MIB, "method": f"{device.type}: {CPU_METHOD}"}
