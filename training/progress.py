"""Training progress as text: each stage's measured step rate and time left, and stage 3's one-off compile.

A progress callback (`trainer.Progress`) is called as `progress(stage, step, total, loss)`. One may also have
`compiling(expected: str)` and `compiled(seconds)`: the trainer calls them around stage 3's first step, which
torch.compiles the HMC transition (a minute or more of no visible progress otherwise).

The time left is measured, never guessed: the stage's steps since its first one over the seconds they took (the
first step carries one-off costs: warm-up, and in stage 3 the compile), so a stage's first line says the rate is
still being measured. The stages cost different amounts per step (an HMC step about 25 times a VI step,
docs/train_speed.json), so a line gives the time left in its own stage, and says which stage comes next.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

STAGE_NAMES = {"marginal": "stage 1 marginal VAEs", "vi": "stage 2 dependency VAE", "hmc": "stage 3 VAE + HMC"}


def duration(seconds: float) -> str:
    """Seconds for people: '8 s', '2 min 05 s', '1 h 04 min'."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class StageClock:
    """The step rate and time left of the stage in progress (`update` at every report)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.stage: str | None = None
        self.stage_started = self.since = clock()  # a stage starts when the one before it ends
        self.since_step = self.step = self.total = 0

    def update(self, stage: str, step: int, total: int) -> None:
        if stage != self.stage:
            # The rate is measured from the stage's first report on: its first step carries one-off costs
            # (warm-up, and in stage 3 the compile) that would make the time left meaningless.
            self.stage, self.since, self.since_step = stage, self.clock(), step
        self.step, self.total = step, total

    def end_stage(self) -> None:
        self.stage_started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.stage_started

    def rate(self) -> float | None:
        """Steps per second since the stage's first report; None before a later step is measured."""
        steps, seconds = self.step - self.since_step, self.clock() - self.since
        return steps / seconds if steps > 0 and seconds > 0 else None

    def eta(self) -> float | None:
        rate = self.rate()
        return None if rate is None else (self.total - self.step) / rate

    def rate_text(self) -> str:
        rate = self.rate()
        if rate is None:
            return "measuring the step rate"
        return f"{rate:.1f} steps/s" if rate < 10 else f"{rate:.0f} steps/s"

    def eta_text(self, next_stage: str | None = None) -> str:
        """'ETA 1 min 05 s for this stage[, then <next stage>]' (or what is still being measured)."""
        eta = self.eta()
        text = "ETA once the next steps are timed" if eta is None else f"ETA {duration(eta)} for this stage"
        return text + (f", then {next_stage}" if next_stage else "")


def compile_notice(expected: str) -> str:
    return f"{STAGE_NAMES['hmc']}: compiling the HMC sampler (torch.compile, once per run; expected {expected})"


def compiled_notice(seconds: float) -> str:
    return f"{STAGE_NAMES['hmc']}: compiled in {duration(seconds)} (with the first step); training on"


class LineProgress:
    """Training progress as plain lines on `stream` (a log file, a pipe, `docker logs`, a notebook): a line at each
    stage's first step, then one every `every_seconds`, and one at its end, each with the measured step rate and
    the time left; a line before and after stage 3's compile."""

    def __init__(
        self,
        stream: TextIO | None = None,
        prefix: str = "",
        every_seconds: float = 10.0,
        stages: dict[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream, self.prefix, self.every_seconds = stream, prefix, every_seconds
        self.clock = StageClock(clock)
        self.last_line = clock()
        self.seen: set[str] = set()
        self.stages = stages  # {stage: steps} in order, to name the next stage; None: not named

    def write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        print(f"{self.prefix}{text}", file=stream, flush=True)

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        first = stage not in self.seen
        self.seen.add(stage)
        self.clock.update(stage, step, total)
        now = self.clock.clock()
        if first or step == total or now - self.last_line >= self.every_seconds:
            self.last_line = now
            self.write(progress_line(self.clock, stage, step, total, loss, self.next_stage(stage)))
        if step == total:
            self.clock.end_stage()

    def next_stage(self, stage: str) -> str | None:
        order = [s for s, n in (self.stages or {}).items() if n > 0]
        later = order[order.index(stage) + 1 :] if stage in order else []
        return f"{STAGE_NAMES[later[0]]} ({self.stages[later[0]]} steps)" if later else None

    def compiling(self, expected: str) -> None:
        self.write(compile_notice(expected))

    def compiled(self, seconds: float) -> None:
        self.write(compiled_notice(seconds))


def progress_line(clock: StageClock, stage: str, step: int, total: int, loss: float, next_stage: str | None) -> str:
    """One stage's progress: 'stage 2 dependency VAE: step 400/3000, loss 3.210, 12 s, 33 steps/s, ETA 1 min 19 s
    for this stage, then ...'; at its end 'stage 2 dependency VAE: 3000 steps, loss 3.005, 91 s, 33 steps/s'."""
    name = STAGE_NAMES.get(stage, stage)
    head = f"{name}: {total} steps" if step == total else f"{name}: step {step}/{total}"
    text = f"{head}, loss {loss:.3f}, {clock.elapsed():.0f} s, {clock.rate_text()}"
    return text if step == total else f"{text}, {clock.eta_text(next_stage)}"
