"""What every benchmark records about the machine it ran on, beside its figures.

The load average matters as much as the hardware here: on a shared machine it is what explains a
wall time that moved between two runs.
"""

from __future__ import annotations

import os
import platform


def describe(*, torch: bool = False) -> dict:
    """CPU model, cores, RAM, Python, the load average, and torch's build and threads if asked."""
    cpu = platform.processor() or platform.machine()
    info: dict = {"cores": os.cpu_count(), "python": platform.python_version()}
    try:  # Linux: the model name is more telling, and RAM is in /proc/meminfo
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
        with open("/proc/meminfo") as fh:
            info["ram_gb"] = round(int(fh.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    info["cpu"] = cpu
    if torch:
        import torch as _torch

        info["torch"] = _torch.__version__
        info["torch_threads"] = _torch.get_num_threads()
        info["cuda"] = _torch.cuda.get_device_name(0) if _torch.cuda.is_available() else None
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info
