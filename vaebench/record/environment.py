"""Where a record's numbers came from: the machine (CPU model, core count) and the versions of
the libraries that compute them. The sweep keeps it on the study's parent run (tag
``vaebench.environments``: every distinct environment that trained trials of the record, a
resumed sweep on another machine adds its own), and the report prints it beside its
reproducibility statement:

- bit-for-bit: the same study on the same machine with the same library versions gives the
  same numbers (seeds fix the initialisation, the minibatch order and every noise draw);
- within noise: on another CPU (other float kernels, another SIMD width) or other versions, a
  number moves by far less than its seed-to-seed spread; compare against the table's std,
  not digit by digit.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from typing import Any

from vaebench.record.vocab import ENVIRONMENTS_TAG  # noqa: F401  (readers import it from here too)

MAX_KEPT = 12  # the newest environments (an MLflow tag holds about 8,000 characters)
LIBRARIES = ("vaebench", "torch", "numpy", "mlflow", "optuna", "pandas", "ray", "scikit-learn")


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC 7B13'), from /proc/cpuinfo on Linux, else platform's."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    if name and not name.isdigit():
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """This machine and its library versions, as plain JSON-able data."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "libraries": {k: v for k in LIBRARIES if (v := _version(k)) is not None},
    }


def describe(env: dict[str, Any]) -> str:
    """'AMD EPYC 7B13, 2 cores (x86_64, Linux); Python 3.12.3, torch 2.13.0, numpy 2.3.1, ...'"""
    libs = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())
    return (
        f"{env.get('cpu', 'unknown CPU')}, {env.get('cores', '?')} cores ({env.get('arch', '?')}, {env.get('os', '?')}); "
        f"Python {env.get('python', '?')}" + (f", {libs}" if libs else "")
    )


def merged(tag: str | None, env: dict[str, Any]) -> str | None:
    """The tag's list of environments with ``env`` added; None when it is there already."""
    try:
        envs = json.loads(tag) if tag else []
    except ValueError:
        envs = []
    if env in envs:
        return None
    return json.dumps((envs + [env])[-MAX_KEPT:], sort_keys=True)


def environments(tag: str | None) -> list[dict[str, Any]]:
    try:
        out = json.loads(tag) if tag else []
    except ValueError:
        return []
    return out if isinstance(out, list) else []
