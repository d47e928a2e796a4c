"""Where a run's numbers go: `<workdir>/metrics.jsonl`, TensorBoard events, and the log.

Only process 0 writes; the other processes get a writer that does nothing, so callers need no
`if jax.process_index() == 0` of their own. TensorBoard events are written by tensorboardX, which
needs no TensorFlow (clu's metric writers import it).
"""

import json
import logging
import math
import os
import time

import numpy as np

from resnet_jax.errors import RunError
from resnet_jax.train import workdir as workdir_lib

class MetricWriter:
  """Appends one JSON object per call to metrics.jsonl and mirrors scalars to TensorBoard.

  `resume_step`: the step the run restarts from. Records after it were written by the attempt that
  was interrupted and are dropped (the resumed run writes them again), so the file never holds a
  step twice; TensorBoard is told the same through its `purge_step`.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # Imported here: only process 0 needs it.
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, workdir_lib.METRICS_FILE)
    _truncate(path, resume_step)
    self._jsonl = open(path, 'a')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                             purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: v if isinstance(v, int) else float(np.asarray(v)) for k, v in scalars.items()}
    try:
      self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
      self._jsonl.flush()
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))
      self._tb.flush()
    except OSError as e:
      raise RunError(f'{self._jsonl.name}: the metrics of step {step} cannot be written '
                     f'({e.strerror}); the run stopped there. Free space and rerun the same '
                     'command: it resumes from its last checkpoint.') from None

  def close(self) -> None:
    """Closes both files; what a full disk kept them from writing is dropped (a resumed run
    writes those steps again), without a second error or tensorboardX's retry at exit."""
    if not self.enabled:
      return
    try:
      self._jsonl.close()
    except OSError:
      pass
    try:
      self._tb.close()
    except OSError:
      # tensorboardX retries close() at exit (atexit) and fails the same way; mark its event
      # writers closed so that it does not.
      for writer in list(getattr(self._tb, 'all_writers', {}).values()):
        writer.event_writer._closed = True  # pylint: disable=protected-access


def _parse(lines, path):
  """The records of metrics.jsonl lines; a torn line (a crash mid-write) is skipped, with a warning."""
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if not isinstance(record, dict) or not isinstance(record.get('step'), int):
      logging.warning('%s line %d is not a complete record (a crash while writing it?); '
                      'skipping it: %.80r', path, number, line)
      continue
    records.append(record)
  return records


def read_metrics(workdir: str) -> list[dict]:
  """The records of metrics.jsonl, in order."""
  path = os.path.join(workdir, workdir_lib.METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return _parse(f, path)


def _truncate(path: str, last_step: int) -> None:
  """Keeps the complete records up to `last_step`, atomically; torn lines go too."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  records = _parse(lines, path)
  keep = [r for r in records if r['step'] <= last_step]
  if len(keep) == len(lines) and all(line.endswith('\n') for line in lines):
    return
  if len(keep) < len(records):
    logging.info('%s: dropping %d records after step %d, written by the interrupted attempt.',
                 path, len(records) - len(keep), last_step)
  workdir_lib.write_atomic(path, ''.join(json.dumps(r) + '\n' for r in keep))


def best_eval_step(records: list[dict], saved_steps) -> tuple[int | None, float]:
  """The saved step with the best eval accuracy (the earliest of ties), and that accuracy: the
  checkpoint the trainer keeps as its best, and that readers of a run mean by 'best'."""
  evals = [(r['eval/accuracy'], -r['step']) for r in records
           if 'eval/accuracy' in r and r['step'] in saved_steps]
  if not evals:
    return None, -float('inf')
  accuracy, neg_step = max(evals)
  return -neg_step, accuracy


class Progress:
  """A periodic progress line: step, loss, lr, images per second and time to go."""

  def __init__(self, total_steps: int, global_batch: int, first_step: int = 0):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._last_step = first_step
    self._last_time = time.perf_counter()

  def restart(self, step: int) -> None:
    """Measures from now on: call it after the first step, whose time is mostly compilation."""
    self._last_step, self._last_time = step, time.perf_counter()

  def line(self, step: int, loss: float, lr: float) -> str:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    sec_per_step = (now - self._last_time) / steps
    self._last_step, self._last_time = step, now
    eta = sec_per_step * (self.total_steps - step)
    return (f'step {step}/{self.total_steps}  loss {loss:.4f}  lr {lr:.4g}  '
            f'{self.global_batch / sec_per_step:,.0f} img/s  ETA {duration(eta)}')


def duration(seconds: float) -> str:
  """'1h02m03s', '2m03s'; '?' for a time not known."""
  if not math.isfinite(seconds):
    return '?'
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'
