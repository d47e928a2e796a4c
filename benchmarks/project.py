"""The project's own numbers: its train step alone, its whole training loop, its input pipeline.

* `time_train_step`: `resnet_jax.train.step.train_step` mapped by `resnet_jax.parallel.
  DataParallel.map` (as the loop maps it, state donated), with the config's model, optimiser and
  schedule, on one synthetic batch that stays on the devices: compiled ahead of time
  (`.lower().compile()`, both timed), then timed by benchmarks.timing.time_steps.
* `time_training_loop`: `resnet_jax.train.loop.train_and_evaluate` on the config's real data
  pipeline in a temporary workdir; the steady-state img/s between the loop's own progress lines.
* `time_input_pipeline`: `resnet_jax.data.create_train_iterator` alone, batches pulled and
  dropped, no model.
"""

import dataclasses
import logging
import re
import tempfile
import time
from typing import Any

import jax
import numpy as np

from benchmarks import flops, timing
from resnet_jax import data, parallel
from resnet_jax.train import loop, run
from resnet_jax.train import step as step_lib


@dataclasses.dataclass
class StepResult:
  times: timing.StepTimes
  lower_s: float
  compile_s: float
  flops: int  # Matrix FLOPs of one step over all devices (benchmarks.flops).
  step_mem_bytes: int | None  # XLA's memory analysis of the compiled step, per device.


def synthetic_batch(batch_size: int, image_shape, num_classes: int, seed: int = 0, *,
                    pixels: bool = True) -> dict:
  """Random labels and images: uint8 pixels, as the project's input pipelines yield them (the
  step normalises them on the device), or with pixels=False normalised-looking float32, as the
  Flax ImageNet example's host pipeline yields them (the minimal Flax peer)."""
  rng = np.random.default_rng(seed)
  images = (rng.integers(0, 256, (batch_size, *image_shape), np.uint8) if pixels
            else rng.standard_normal((batch_size, *image_shape), np.float32))
  return {'image': images, 'label': rng.integers(0, num_classes, batch_size).astype(np.int32)}


def compiled_memory(compiled) -> int | None:
  """Bytes one call of a compiled executable needs per device (XLA's memory analysis); None
  where the backend gives none."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend implements it.
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


@dataclasses.dataclass
class CompiledStep:
  """The project's train step compiled ahead of time, with the state and batch it runs on."""
  compiled: Any
  state: Any
  batch: Any
  lower_s: float
  compile_s: float
  model: Any
  flops: int  # Matrix FLOPs of one step over all devices (benchmarks.flops).

  def __call__(self):
    """One step; the donated state is replaced by the new one."""
    self.state, metrics = self.compiled(self.state, self.batch)
    return self.state, metrics


def compile_train_step(prepared, devices) -> CompiledStep:
  """The project's train step as the loop maps it (state donated), lowered and compiled ahead of
  time on one synthetic batch that stays on the devices; `prepared`: resnet_jax.train.run's."""
  par = parallel.DataParallel(prepared.config.parallel.backend, devices)
  built = run.build(prepared, par)
  p_train_step = par.map(step_lib.configured_train_step(built.config), donate_state=True)
  batch = par.put_batch(synthetic_batch(built.config.batch_size, prepared.image_shape,
                                        built.config.model.num_classes, built.config.seed))
  start = time.perf_counter()
  lowered = p_train_step.lower(built.state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  return CompiledStep(compiled, built.state, batch, lowered_at - start, compiled_at - lowered_at,
                      built.model, flops.count(p_train_step, built.state, batch))


def step_stats(step: CompiledStep) -> tuple[int, int | None]:
  """(matrix FLOPs of one step over all devices, bytes per device) of a compiled project step."""
  return step.flops, compiled_memory(step.compiled)


def time_train_step(prepared, devices, *, warmup: int, steps: int) -> StepResult:
  """Compiles and times the project's train step alone. benchmarks/throughput.py times it in
  turns with the Flax peer instead."""
  step = compile_train_step(prepared, devices)
  step_flops, memory = step_stats(step)
  times = timing.time_steps(step, jax.block_until_ready, warmup=warmup, steps=steps)
  return StepResult(times, step.lower_s, step.compile_s, step_flops, memory)


class _ProgressTimes(logging.Handler):
  """Records when the loop logs each progress line (`step N/T ... img/s ...`)."""

  LINE = re.compile(r'step (\d+)/\d+ .* img/s')

  def __init__(self):
    super().__init__(logging.INFO)
    self.marks = []  # (step, perf_counter at the log line)

  def emit(self, record):
    match = self.LINE.match(record.getMessage())
    if match:
      self.marks.append((int(match.group(1)), time.perf_counter()))


def loop_config(config, steps: int):
  """`config` for a timing run of `steps` steps: no eval or checkpoint before the end, progress
  lines often enough to time, and a final eval of one batch."""
  config = config.copy_and_resolve_references()
  config.num_epochs = 0.0
  config.num_train_steps = steps
  config.eval_every_epochs = 0.0
  config.eval_every_steps = config.checkpoint_every_steps = 10 * steps
  config.log_every_steps = max(1, min(config.log_every_steps, steps // 10))
  if '[' not in config.data.eval_split:
    # The loop evaluates and saves once at its last step, after the last progress line: keep it
    # short.
    config.data.eval_split = f'{config.data.eval_split}[:{config.eval_batch_size}]'
  return config


def time_training_loop(config, devices, *, steps: int, warmup: int) -> tuple[float, int]:
  """(steady-state img/s, steps measured) of train_and_evaluate on the config's data pipeline.

  The img/s is measured between the first progress line at or after step `warmup` (so the
  compilation and the pipeline's start are left out) and the last one, in a temporary workdir.
  """
  config = loop_config(config, steps)
  times = _ProgressTimes()
  root, absl_logger = logging.getLogger(), logging.getLogger('absl')
  levels = root.level, absl_logger.level
  root.addHandler(times)
  root.setLevel(logging.INFO)  # The loop logs its progress lines at INFO.
  absl_logger.setLevel(logging.WARNING)  # orbax and tfds log every file at INFO.
  try:
    with tempfile.TemporaryDirectory(prefix='resnet_jax_bench_') as workdir:
      loop.train_and_evaluate(config, workdir, devices=devices)
  finally:
    root.removeHandler(times)
    root.setLevel(levels[0])
    absl_logger.setLevel(levels[1])
  marks = [(s, t) for s, t in times.marks if s >= warmup]
  if len(marks) < 2:
    raise RuntimeError(
        f'the loop logged {len(times.marks)} progress lines, {len(marks)} of them at step '
        f'{warmup} or later; timing needs two (raise --loop_steps above --loop_warmup)')
  (s0, t0), (s1, t1) = marks[0], marks[-1]
  return (s1 - s0) * config.batch_size / (t1 - t0), s1 - s0


def time_input_pipeline(config, *, warmup: int, batches: int) -> float:
  """img/s of this process's training batches from the configured pipeline, with no model."""
  iterator = data.create_train_iterator(config.data, global_batch_size=config.batch_size,
                                        seed=config.seed)
  for _ in range(warmup):
    next(iterator)
  images = 0
  start = time.perf_counter()
  for _ in range(batches):
    images += len(next(iterator)['label'])
  elapsed = time.perf_counter() - start
  del iterator  # Stops grain's worker processes, if any.
  return images / elapsed
