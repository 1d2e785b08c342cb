"""Profile of training steps: where an episode's time goes (torch profiler), page faults.

Runs the engine's training step (sampling, loading, augmentation, forward, backward, Adam)
on a synthetic split, then profiles ``--episodes`` steps and prints, per step: wall time,
minor page faults, the step's named phases (``step/load+augment``, ``step/forward``,
``step/backward``, ``step/optimizer``) and the operators with the most self CPU time.
``--no-malloc-tuning`` / ``--no-channels-last`` show what each setting is worth;
``--trace FILE`` writes a Chrome trace (open it in chrome://tracing or Perfetto).

``python -m subspace_fsl.bench profile [--head multisubspace] [--episodes 5] ...``
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

PHASES = ("step/load+augment", "step/forward", "step/backward", "step/optimizer")


def main(argv: list[str] | None = None) -> int:
    from subspace_fsl.bench.engine import _config, training_stepper

    parser = argparse.ArgumentParser(
        prog="python -m subspace_fsl.bench profile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--head", default="multisubspace")
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=5, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps (heap growth)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-malloc-tuning", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--augment", default="standard", choices=("none", "flip", "standard"),
                        help="training augmentation policy (train.augment)")
    parser.add_argument("--rows", type=int, default=12, help="operators listed")
    parser.add_argument("--trace", type=Path, default=None, help="write a Chrome trace here")
    args = parser.parse_args(argv)
    profiled = args.episodes

    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        settings = [
            f"model.backbone={args.backbone}",
            f"runtime.malloc_tuning={str(not args.no_malloc_tuning).lower()}",
            f"runtime.channels_last={str(not args.no_channels_last).lower()}",
            f"train.augment={args.augment}",
        ]
        cfg = _config(Path(tmp), _engine_args(args), args.head, settings)
        step = training_stepper(cfg)
        for _ in range(args.warmup):
            step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        for _ in range(profiled):
            step()
        wall = (time.perf_counter() - started) / profiled
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / profiled
        activities = [ProfilerActivity.CPU]
        if cfg["runtime"]["device"].startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        # the profiler's own warm-up steps first: its buffers must not grow the heap while
        # the recorded steps run (that would put page faults back into the picture)
        schedule = torch.profiler.schedule(wait=1, warmup=3, active=profiled)
        with profile(activities=activities, schedule=schedule) as prof:
            for _ in range(1 + 3 + profiled):
                step()
                prof.step()
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    events = prof.key_averages()
    runtime = cfg["runtime"]
    print(
        f"{args.backbone} + {args.head}, {args.size} px, {args.way}-way {args.shot}-shot "
        f"{args.query}-query, augment={args.augment}, malloc_tuning="
        f"{runtime['malloc_tuning']}, channels_last={runtime['channels_last']}, "
        f"threads={runtime['threads'] or 'cores given'}"
    )
    print(f"wall {1000 * wall:.1f} ms per step (unprofiled), {faults:.0f} minor page faults")
    print("phases (CPU time per step, profiled):")
    by_name = {e.key: e for e in events}
    for phase in PHASES:
        if phase in by_name:
            print(f"  {phase:<22} {by_name[phase].cpu_time_total / 1000 / profiled:8.1f} ms")
    print("operators by self CPU time per step:")
    operators = sorted(
        (e for e in events if not e.key.startswith("step/")),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )
    total = sum(e.self_cpu_time_total for e in events)
    for event in operators[: args.rows]:
        print(
            f"  {event.key:<40} {event.self_cpu_time_total / 1000 / profiled:8.1f} ms "
            f"{100 * event.self_cpu_time_total / total:5.1f}%  ({event.count // profiled} calls)"
        )
    return 0


def _engine_args(args: argparse.Namespace) -> argparse.Namespace:
    """The settings ``bench.engine._config`` reads: a synthetic set of 20 classes x 30 images
    (the profile trains on its base half)."""
    return argparse.Namespace(
        size=args.size,
        classes=20,
        images_per_class=30,
        way=args.way,
        shot=args.shot,
        query=args.query,
        episodes=600,
        device=args.device,
        threads=args.threads,
    )
