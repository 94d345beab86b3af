"""The machine a benchmark ran on, printed first so that a number can be judged.

Every benchmark calls :func:`header` at start (CPU model, native bf16 / AMX, cores, torch threads,
load average, other runnable tasks) and stores :func:`info` with its results. "idle" means no other
task was runnable in five samples of ``/proc/loadavg`` over 0.5 s at the start; the 1-minute load
average is printed too but remembers the last minute (a benchmark that just ended counts there).
Numbers taken with other runnable tasks are "loaded", not idle-machine numbers.

    from machine import header, info   # benchmarks/ is on sys.path when a script runs from it
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def other_runnable(samples: int = 5, interval: float = 0.1) -> int:
    """Runnable tasks besides this process's own thread, at most over a few samples of
    ``/proc/loadavg``: 0 means nothing else was competing for the cores when the benchmark began
    (the load average still remembers the previous minute, e.g. a benchmark that just ended)."""
    most = 0
    for i in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return -1
        most = max(most, running - 1)
        if i + 1 < samples:
            time.sleep(interval)
    return most


def info() -> dict[str, Any]:
    """Machine facts as plain data (JSON-ready)."""
    model, flags = _cpu_model_and_flags()
    others = other_runnable()
    load1, load5, _ = os.getloadavg()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "amx": "amx_tile" in flags,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1min": round(load1, 2),
        "loadavg_5min": round(load5, 2),
        "other_runnable": others,
        "idle": others == 0,
    }


def header() -> str:
    """One line: CPU, bf16 support, threads, load average (idle or loaded)."""
    i = info()
    state = (
        "idle (no other runnable task)"
        if i["idle"]
        else f"LOADED ({i['other_runnable']} other runnable tasks)"
    )
    bf16 = "native bf16" + (" + AMX" if i["amx"] else "") if i["native_bf16"] else "no native bf16"
    gpu = f", GPU {i['cuda']}" if i["cuda"] else ""
    return (
        f"machine: {i['cpu']}, {i['cpus']} CPUs, {bf16}{gpu}; torch {i['torch']} with "
        f"{i['torch_threads']} threads; load average {i['loadavg_1min']:.2f} (1 min), "
        f"{i['loadavg_5min']:.2f} (5 min): {state}"
    )


if __name__ == "__main__":
    print(header())
