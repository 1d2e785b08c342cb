"""Where and how the engine runs: device, threads, allocator tuning, memory format, autocast.

``configure(cfg)`` reads the ``runtime`` section once per process and returns a ``Runtime``
that the engine passes around; nothing here holds a default of its own (the schema does).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# glibc mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# glibc caps M_MMAP_THRESHOLD at 4 MiB * sizeof(long) (32 MiB on 64-bit); larger values are refused
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_malloc_tuned: bool | None = None


@dataclass(frozen=True)
class Runtime:
    """The resolved ``runtime`` settings of one process."""

    device: torch.device
    threads: int
    amp: bool  # bf16 autocast; only ever True on CUDA
    channels_last: bool
    compile: bool
    progress: str  # bar | log | none (auto resolved)
    malloc_tuned: bool
    cache_on_device: bool | str = "auto"  # True | False | "auto" (see engine.data.place_cache)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when ``amp`` (``configure`` sets it on CUDA only); a no-op otherwise."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def choose_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA device must exist."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"runtime.device={setting!r} but CUDA is not available here")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"runtime.device={setting!r} but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist"
            )
    return device


def cores_given() -> int:
    """CPU cores this process was given: Snakemake's or SLURM's count, else its CPU affinity.

    Snakemake exports a job's ``threads`` as OMP_NUM_THREADS; SLURM exports --cpus-per-task.
    """
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def tune_malloc() -> bool:
    """Keep freed tensor memory in glibc's heap so the next episode reuses it, not re-maps it.

    By default glibc serves every block above 128 KiB (raised dynamically, but never above
    32 MiB) with a fresh ``mmap`` and unmaps it on free; a Conv-4 training step at 84 px has
    activations of up to 190 MB, so every step page-faults them in again (half of the step,
    measured in README "Performance"). Raising the threshold alone cannot reach 190 MB, so
    ``M_MMAP_MAX = 0`` turns mmap'd blocks off and ``M_TRIM_THRESHOLD`` (1 GiB) stops the heap
    from being returned after each step. The cost: the process keeps its peak heap. The
    memory-mapped image cache is not malloc'd and is unaffected. Returns False where there is
    no glibc (macOS, musl) or a call is refused; applied at most once per process.
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok_trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    ok_max = mallopt(M_MMAP_MAX, 0) == 1
    _malloc_tuned = ok_mmap and ok_trim and ok_max
    return _malloc_tuned


def resolve_progress(setting: str) -> str:
    """``auto`` -> a tqdm bar on a terminal, plain log lines otherwise."""
    if setting != "auto":
        return setting
    return "bar" if sys.stderr.isatty() else "log"


def configure(cfg: Mapping[str, Any]) -> Runtime:
    """Apply the ``runtime`` section to this process and return it resolved."""
    settings = cfg["runtime"]
    device = choose_device(settings["device"])
    threads = settings["threads"] or cores_given()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    malloc_tuned = tune_malloc() if settings["malloc_tuning"] else False
    amp = bool(settings["amp"]) and device.type == "cuda"
    if settings["amp"] and not amp:
        log.info("runtime.amp=true ignored: bf16 autocast is used on CUDA only (device %s)", device)
    if device.type == "cuda":
        # cuDNN autotuning picks kernels by timing, which makes runs differ; keep them repeatable
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return Runtime(
        device=device,
        threads=threads,
        amp=amp,
        channels_last=bool(settings["channels_last"]),
        compile=bool(settings["compile"]),
        progress=resolve_progress(settings["progress"]),
        malloc_tuned=malloc_tuned,
        cache_on_device=settings["cache_on_device"],
    )


def place_model(model: nn.Module, runtime: Runtime) -> nn.Module:
    """Move a model to the device, in channels_last memory format when asked."""
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(module: nn.Module, runtime: Runtime) -> nn.Module:
    """``torch.compile`` a module when ``runtime.compile`` (it shares the original's weights)."""
    if not runtime.compile:
        return module
    return torch.compile(module)  # type: ignore[return-value]


def to_input(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Put an image batch in the memory format the model was placed in."""
    if runtime.channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


@contextlib.contextmanager
def no_grad_eval(model: nn.Module) -> Iterator[None]:
    """Evaluation mode under inference_mode, restoring the previous train/eval flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
