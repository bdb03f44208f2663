"""What several benchmark scripts share: their own options beside the Config's, the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def pop_option(argv: list[str], name: str, default: str | None) -> tuple[str | None, list[str]]:
    """The value of this script's own `--name value` option, and the Config options left."""
    if f"--{name}" not in argv:
        return default, argv
    at = argv.index(f"--{name}")
    return argv[at + 1], argv[:at] + argv[at + 2:]


def machine() -> str:
    """The CPU's model name, its cores and the torch version, for a benchmark's heading."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
