"""Training progress: a tqdm bar on a terminal, plain log lines elsewhere, or nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from tqdm import tqdm

log = logging.getLogger("subspace_fsl.train")


class Progress:
    """``mode`` is ``bar`` (tqdm: episodes/s, ETA, loss, last val acc), ``log`` or ``none``."""

    def __init__(self, mode: str, total: int, initial: int, log_every: int) -> None:
        self.mode, self.total, self.log_every = mode, total, log_every
        self.done = initial
        self.start_done, self.start_time = initial, time.monotonic()
        self.postfix: dict[str, str] = {}
        self.bar = (
            tqdm(
                total=total,
                initial=initial,
                unit="ep",
                desc="train",
                dynamic_ncols=True,
                smoothing=0.1,
            )
            if mode == "bar"
            else None
        )

    def rate(self) -> float:
        """Episodes per second since this process started (resumed runs count from there)."""
        elapsed = time.monotonic() - self.start_time
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def update(self, episode: int, values: Mapping[str, float]) -> None:
        """One episode finished; ``values`` (loss, val acc, ...) shown next to the rate."""
        step, self.done = episode - self.done, episode
        self.postfix.update({k: f"{v:.4g}" for k, v in values.items()})
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(step)
        elif self.mode == "log" and (episode % self.log_every == 0 or episode == self.total):
            rate = self.rate()
            eta = (self.total - episode) / rate if rate > 0 else float("nan")
            details = " ".join(f"{k}={v}" for k, v in self.postfix.items())
            log.info(
                "episode %d/%d %.2f ep/s ETA %s %s", episode, self.total, rate, _clock(eta), details
            )

    def message(self, text: str) -> None:
        """A line that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text)
        elif self.mode == "log":
            log.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # nan / inf: no rate yet
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"
