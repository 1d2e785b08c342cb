"""Runtime settings: device choice, threads from the cores given, allocator tuning, progress."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from waiting import HANG_S

from subspace_fsl.config import load_config
from subspace_fsl.engine.progress import Progress
from subspace_fsl.runtime import choose_device, configure, cores_given, resolve_progress


def test_auto_device_is_cuda_only_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert choose_device("auto").type == expected
    assert choose_device("cpu") == torch.device("cpu")


def test_asking_for_a_missing_cuda_device_names_the_key() -> None:
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"runtime.device='cuda:99' but only"):
            choose_device("cuda:99")
    else:
        with pytest.raises(ValueError, match=r"runtime.device='cuda:1' but CUDA is not available"):
            choose_device("cuda:1")


def test_cores_given_follow_snakemake_then_slurm(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert cores_given() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cores_given() == 6
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert cores_given() >= 1


def test_configure_applies_threads_amp_and_progress() -> None:
    before = torch.get_num_threads()
    try:
        runtime = configure(load_config(None, ["runtime.threads=1", "runtime.amp=true",
                                               "runtime.device=cpu", "runtime.progress=log"]))
        assert torch.get_num_threads() == runtime.threads == 1
        assert runtime.amp is False  # bf16 autocast is for CUDA only
        assert runtime.progress == "log"
        with runtime.autocast():
            assert not torch.is_autocast_enabled()
    finally:
        torch.set_num_threads(before)


def test_progress_auto_is_a_bar_only_on_a_terminal() -> None:
    # pytest captures stderr: not a terminal
    assert resolve_progress("auto") == "log"
    assert resolve_progress("none") == "none"


MALLOC_PROBE = textwrap.dedent(
    """
    import sys
    from subspace_fsl.config import load_config
    from subspace_fsl.runtime import configure
    settings = [f"runtime.malloc_tuning={sys.argv[1]}", "runtime.threads=1"]
    runtime = configure(load_config(None, settings))
    import resource, torch
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    images = torch.randn(20, 64, 84, 84)  # 36 MB activations, above glibc's mmap thresholds
    counts = []
    for _ in range(7):  # training-like steps; the heap may still grow in the first few
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.nn.functional.relu(conv(images)).sum().backward()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    faults = min(counts[-3:])  # steady state
    print(runtime.malloc_tuned, faults)
    """
)


def test_malloc_tuning_is_applied_on_glibc_and_can_be_switched_off() -> None:
    def probe(flag: str) -> tuple[str, int]:
        result = subprocess.run([sys.executable, "-c", MALLOC_PROBE, flag], capture_output=True,
                                text=True, check=True, timeout=HANG_S)
        tuned, faults = result.stdout.split()
        return tuned, int(faults)

    tuned, faults_tuned = probe("true")
    untuned, faults_default = probe("false")
    assert untuned == "False"
    # glibc (Linux) only: elsewhere the setting is accepted and does nothing
    assert tuned == str(sys.platform.startswith("linux"))
    if tuned == "True":
        # glibc's default maps every large block afresh: one page fault per 4 KiB page
        assert faults_default > 20_000
        # tuned, freed blocks are reused from the heap: (almost) no new page faults
        assert faults_tuned < faults_default / 20


def test_log_progress_writes_lines_with_rate_eta_loss_and_val(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="subspace_fsl.train"):
        progress = Progress("log", total=20, initial=0, log_every=10)
        for episode in range(1, 21):
            progress.update(episode, {"loss": 1.5, "val": 0.25})
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("episode 10/20 ")
    assert "ep/s ETA " in lines[0] and "loss=1.5" in lines[0] and "val=0.25" in lines[0]


def test_bar_progress_shows_rate_and_postfix(capsys) -> None:
    progress = Progress("bar", total=5, initial=2, log_every=1)
    for episode in range(3, 6):
        progress.update(episode, {"loss": 0.5, "val": 0.75})
    progress.close()
    err = capsys.readouterr().err
    assert "5/5" in err and "ep/s" in err and "loss=0.5" in err and "val=0.75" in err
