"""The machine a result was made on: what decides whether a rerun gives the same bytes.

Tables are byte-identical when the floating-point kernels are the same: the same CPU (its
vector extensions choose the oneDNN/MKL kernel, and so the order of every sum), the same torch
build and the same number of threads per job (a reduction split over more threads adds in
another order). ``python -m subspace_fsl.machine [FILE ...]`` prints these facts, then each
file with its SHA-256, so a table is quoted together with the machine that made it
(docs/reproducibility.md).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from subspace_fsl import __version__
from subspace_fsl.runtime import cores_given

CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The vector extensions the kernels dispatch on (AVX-512, AVX2, ...), as torch sees them."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return capability() if capability else "unknown"


def describe() -> dict[str, str]:
    """Name -> value of everything that decides a rerun's numbers on this machine."""
    return {
        "cpu": cpu_model(),
        "cpu_capability": cpu_flags(),
        "cores_given": str(cores_given()),
        "cores_online": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "mkldnn": str(torch.backends.mkldnn.is_available()),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "subspace_fsl": __version__,
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Print the machine, then each file named (its SHA-256 and its text)."""
    files = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    for name, value in describe().items():
        print(f"{name}: {value}")
    for path in files:
        if not path.is_file():
            print(f"subspace_fsl.machine: error: {path} is not a file", file=sys.stderr)
            return 2
        print(f"\n{path} (sha256 {sha256(path)}):\n")
        print(path.read_text(errors="replace").rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
