"""Where a run's numbers go: `<workdir>/metrics.jsonl`, TensorBoard events, and the log.

Only process 0 writes; the other processes get a writer that does nothing, so callers need no
`if jax.process_index() == 0` of their own. TensorBoard events are written by tensorboardX, which
needs no TensorFlow (clu's metric writers import it).
"""

import json
import math
import os
import time

import numpy as np


class MetricWriter:
  """Appends one JSON object per call to metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # Imported here: only process 0 needs it.
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of metrics.jsonl, in order (a resumed run appends to the same file)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """A periodic progress line: step, loss, lr, images per second and time to go."""

  def __init__(self, total_steps: int, global_batch: int, first_step: int = 0):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._last_step = first_step
    self._last_time = time.perf_counter()

  def line(self, step: int, loss: float, lr: float) -> str:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    sec_per_step = (now - self._last_time) / steps
    self._last_step, self._last_time = step, now
    eta = sec_per_step * (self.total_steps - step)
    return (f'step {step}/{self.total_steps}  loss {loss:.4f}  lr {lr:.4g}  '
            f'{self.global_batch / sec_per_step:,.0f} img/s  ETA {_duration(eta)}')


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'
