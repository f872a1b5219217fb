"""What the numbers were measured on: cores, CPU model, Python and the libraries on the path."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

#: libraries whose versions change what is measured
LIBRARIES = ("uvloop", "picows", "orjson", "msgspec", "pyzmq", "numpy", "ccxt", "psutil")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "libraries": versions,
    }


def one_line(m: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    return (f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
            f"{m['implementation']} {m['python']}, Linux {m['kernel']}; {libs}")
