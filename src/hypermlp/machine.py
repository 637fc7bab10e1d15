"""What a measurement ran on: one record shared by ``hypermlp bench`` and ``hypermlp compare``.

Timings and accuracies only mean something next to the machine, the software versions and how
busy the machine was, so both write this record into their JSON and markdown outputs.
"""

from __future__ import annotations

import os
import platform
from typing import Optional

import torch

__all__ = ["machine_info"]


def machine_info(device: Optional[str] = None, dtype: Optional[str] = None) -> dict:
    """Platform, CPU, software versions, torch threads, device and the load average now.

    ``device`` (e.g. ``"cpu"``, ``"cuda:0"``) defaults to CUDA when available, else the CPU;
    ``dtype`` (a name such as ``"fp32"``) is recorded only when given.
    """
    import numpy

    import hypermlp

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    cpu = _cpu_model()
    if cpu:
        info["cpu"] = cpu
    info.update({
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "hypermlp": hypermlp.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
    })
    if dtype is not None:
        info["dtype"] = dtype
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    try:
        # other processes competing for the CPU inflate every time measured after this
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def _cpu_model() -> Optional[str]:
    """The CPU's model name from /proc/cpuinfo (Linux only; None elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
