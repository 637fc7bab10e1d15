"""Measurement primitives: the device and dtype to run on, a synchronised clock, peak memory and
the bytes autograd saves for the backward.

Memory on CPU: the peak, over the measured call, of the bytes held by tensors allocated during
it (PyTorch profiler memory events, i.e. the c10 CPU allocator's accounting). Parameters,
inputs and anything alive before the call are not counted; the parameter gradients and
activations are. Memory that oneDNN/MKL allocate internally outside the c10 allocator is not
seen. On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the call.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List

import torch

MIB = 1024.0 * 1024.0
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Env:
    """Where the benchmark runs: a device and a compute dtype (bf16/fp16 through autocast)."""

    def __init__(self, device: str, dtype: str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype_name = dtype
        self.amp_dtype = AUTOCAST_DTYPES[dtype]

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def sync(self) -> None:
        """Wait for the work queued on the device (CUDA runs asynchronously)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """The time in seconds, once the device has finished the work queued so far."""
        self.sync()
        return time.perf_counter()


def peak_extra_bytes(fn: Callable[[], object], env: Env) -> int:
    """Peak of the bytes allocated during ``fn()`` and alive at the same time (see module doc)."""
    gc.collect()
    if env.cuda:
        env.sync()
        base = torch.cuda.memory_allocated(env.device)
        torch.cuda.reset_peak_memory_stats(env.device)
        fn()
        env.sync()
        return int(torch.cuda.max_memory_allocated(env.device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _QuietStderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f).get("traceEvents", [])
    finally:
        os.unlink(path)
    mem = [e["args"] for e in events if e.get("name") == "[memory]" and int(e.get("args", {}).get("Device Type", 0)) == 0]
    if not mem:
        return 0
    # "Total Allocated" is the allocator's running count; only allocations made while profiling
    # are tracked, so its value before the first event is the baseline.
    base = int(mem[0]["Total Allocated"]) - int(mem[0]["Bytes"])
    return int(max(int(m["Total Allocated"]) for m in mem) - base)


class _QuietStderr:
    """Silence the profiler back end's start/stop lines (printed by C++ on fd 2)."""

    def __enter__(self):
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        return False


def saved_bytes(fn: Callable[[], object], exclude: List[torch.Tensor]) -> int:
    """Bytes of the unique storages autograd saves for the backward during ``fn()``, the storages
    of ``exclude`` (parameters, inputs) not counted."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: Dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return int(sum(seen.values()))
