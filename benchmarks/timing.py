"""The one timing method every implementation in benchmarks/throughput.py is measured with.

Each step is timed on its own, from the call to the moment its results are ready (`sync`
blocks until the device has finished it); the figure is the median over the timed steps, after
`warmup` untimed steps. The project, the Flax peer and the PyTorch peers all go through
`time_steps`, so none of them is timed more or less favourably than another. Imports neither
JAX nor PyTorch.

`time_interleaved` times several implementations in the same process in turns, a step of each
in alternating order, so that a drift of the machine's speed during the run (another tenant,
clocks, a slow minute) falls on all of them alike and cancels out of their ratio; timed one after
the other, two equally fast steps came out up to 5% apart on a shared 2-core CPU.
"""

import dataclasses
import statistics
import time
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class StepTimes:
  median_s: float
  first_s: float  # The first warm-up step: where a lazily compiling framework compiles.
  times_s: tuple[float, ...]  # Every timed step, in order.

  def images_per_s(self, batch_size: int) -> float:
    return batch_size / self.median_s


def _check(warmup: int, steps: int) -> None:
  if warmup < 1 or steps < 1:
    raise ValueError(f'warmup={warmup} and steps={steps} must both be >= 1')


def time_steps(step: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int,
               steps: int) -> StepTimes:
  """Runs `step()` warmup + steps times, each followed by `sync(result)`, and times the last
  `steps` of them."""
  _check(warmup, steps)
  times = []
  for _ in range(warmup + steps):
    start = time.perf_counter()
    sync(step())
    times.append(time.perf_counter() - start)
  timed = tuple(times[warmup:])
  return StepTimes(median_s=statistics.median(timed), first_s=times[0], times_s=timed)


def time_interleaved(steps_by_name: dict[str, Callable[[], Any]], sync: Callable[[Any], Any], *,
                     warmup: int, steps: int) -> dict[str, StepTimes]:
  """Times each `step()` of `steps_by_name` as `time_steps` does, but in turns.

  Each is warmed up on its own first (`warmup` steps); then every round runs one timed step of
  each, the order reversed every other round so that none always follows the same one, until
  each has `steps` timed steps. Returns the StepTimes of each name.
  """
  _check(warmup, steps)
  names = list(steps_by_name)
  first = {}
  for name in names:
    for i in range(warmup):
      start = time.perf_counter()
      sync(steps_by_name[name]())
      if i == 0:
        first[name] = time.perf_counter() - start
  timed = {name: [] for name in names}
  for round_ in range(steps):
    for name in (names if round_ % 2 == 0 else names[::-1]):
      start = time.perf_counter()
      sync(steps_by_name[name]())
      timed[name].append(time.perf_counter() - start)
  return {name: StepTimes(median_s=statistics.median(timed[name]), first_s=first[name],
                          times_s=tuple(timed[name])) for name in names}
