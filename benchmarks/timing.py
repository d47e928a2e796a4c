"""The one timing method every implementation in benchmarks/throughput.py is measured with.

Each step is timed on its own, from the call to the moment its results are ready (`sync`
blocks until the device has finished it); the figure is the median over the timed steps, after
`warmup` untimed steps. The project, the Flax peer and the PyTorch peers all go through
`time_steps`, so none of them is timed more or less favourably than another. Imports neither
JAX nor PyTorch.
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


def time_steps(step: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int,
               steps: int) -> StepTimes:
  """Runs `step()` warmup + steps times, each followed by `sync(result)`, and times the last
  `steps` of them."""
  if warmup < 1 or steps < 1:
    raise ValueError(f'warmup={warmup} and steps={steps} must both be >= 1')
  times = []
  for _ in range(warmup + steps):
    start = time.perf_counter()
    sync(step())
    times.append(time.perf_counter() - start)
  timed = tuple(times[warmup:])
  return StepTimes(median_s=statistics.median(timed), first_s=times[0], times_s=timed)
