"""Where one train step spends its time, by kind of op: the project's step against its peers'.

  python -m benchmarks.op_profile --workload=cifar_r20_fp32          # any preset of throughput
  python -m benchmarks.op_profile --workload=cifar_r56_fp32 --steps=5 --top=15
  python -m benchmarks.op_profile --config=configs/cifar10_resnet20.py --config.model.scan=true

The project's step (benchmarks/project.py: the loop's train step, compiled ahead of time) and
the minimal Flax step (benchmarks/peers/flax_minimal.py) each run --steps steps under
`jax.profiler.trace`; every XLA op event of the trace is matched to its HLO instruction in the
compiled module and put in a category:

  conv forward / conv input-grad / conv filter-grad: `convolution` instructions, alone or in a
      library fusion (YNNPACK, XNNPACK, oneDNN), told apart by the autodiff path in their
      metadata and their output (a filter gradient's has no batch dimension);
  fusion: XLA's fused elementwise and reduction kernels (BN, ReLU, the adds, the optimiser);
  copy/transpose: layout changes XLA inserted; other: everything else.

PyTorch (in a subprocess, where torch is installed) runs the same net under `torch.profiler`;
its ops' self times are put in the same categories (`convolution_backward` computes both
gradients in one call, so its time is given as one 'conv backward' figure). The columns are ms
per step, the ops' busy time summed and divided by the steps, so on a multi-core CPU they can
exceed the wall time. One table, printed: where the project's step spends what its peers do not.
"""

import collections
import json
import os
import re
import subprocess
import sys
import tempfile

import functools

from absl import app, flags

from benchmarks import hardware
from resnet_jax import cli
from resnet_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('workload', None, 'A preset of benchmarks.workloads.WORKLOADS (default '
                    'cifar_r20_fp32), or give --config.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps before the profile.')
flags.DEFINE_integer('steps', 5, 'Profiled steps.')
flags.DEFINE_integer('top', 10, 'Also list the N most expensive single ops of each side.')
flags.DEFINE_bool('flax', True, 'Profile the minimal Flax step too (benchmarks/peers).')
flags.DEFINE_bool('torch', True, 'Profile the PyTorch peer too (eager), where torch is installed.')

CATEGORIES = ('conv forward', 'conv input-grad', 'conv filter-grad', 'conv backward (both)',
              'fusion / elementwise', 'batch norm', 'copy/transpose', 'optimizer', 'other')

_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\(?[\w\[\],{}: ]*?\)?) ([\w\-]+)\(')
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$')


def _computations(hlo_text: str) -> dict[str, list[str]]:
  """Computation name -> its instruction lines."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    start = _COMPUTATION.match(line)
    if start and ' = ' not in line:
      current = bodies.setdefault(start.group(1), [])
    elif line.strip() == '}':
      current = None
    elif current is not None:
      current.append(line)
  return bodies


def _conv_category(conv_line: str, output_shape: str, batch_size: int) -> str:
  # A filter gradient's output is a kernel; the forward conv and the input gradient output
  # activations, whose leading dimension is the batch. (XLA writes the filter gradient as a
  # convolution over transposed operands, so its dim_labels look like a forward conv's.)
  dims = re.search(r'\[(\d+)', output_shape)
  if not dims or int(dims.group(1)) != batch_size:
    return 'conv filter-grad'
  op_name = re.search(r'op_name="([^"]*)"', conv_line)
  return 'conv input-grad' if op_name and 'transpose(' in op_name.group(1) else 'conv forward'


def hlo_categories(hlo_text: str, batch_size: int) -> dict[str, str]:
  """HLO instruction name -> category, from the compiled module's text. Convolutions may stand
  alone or sit in a library fusion (XLA:CPU hands some to YNNPACK, XNNPACK or oneDNN)."""
  bodies = _computations(hlo_text)
  categories = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode = match.groups()
    if opcode == 'convolution':
      categories[name] = _conv_category(line, shape, batch_size)
    elif opcode in ('fusion', 'custom-call'):
      called = re.search(r'calls=%?([\w.\-]+)', line)
      inner = [l for l in bodies.get(called.group(1), []) if ' convolution(' in l] if called else []
      if inner or (opcode == 'custom-call' and 'conv' in line.lower()):
        categories[name] = _conv_category(inner[0] if inner else line, shape, batch_size)
      else:
        categories[name] = 'fusion / elementwise'
    elif opcode in ('copy', 'transpose'):
      categories[name] = 'copy/transpose'
    else:
      categories[name] = 'other'
  return categories


def profile_xla(step, hlo_text: str, batch_size: int, warmup: int,
                steps: int) -> tuple[dict, list]:
  """({category: ms per step}, [(ms per step, op, category)]) of a compiled XLA step: `step()`
  runs one step and returns its outputs; `hlo_text` is its compiled module."""
  import jax

  categories = hlo_categories(hlo_text, batch_size)
  for _ in range(warmup):
    jax.block_until_ready(step())
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir):
      for _ in range(steps):
        jax.block_until_ready(step())
    paths = [os.path.join(d, f) for d, _, files in os.walk(log_dir) for f in files
             if f.endswith('.xplane.pb')]
    profile = jax.profiler.ProfileData.from_file(paths[0])
  per_op = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in categories:
          per_op[event.name] += event.duration_ns
  if not per_op:
    raise RuntimeError('the profile has no event named after an HLO instruction of the step; '
                       f'planes: {[p.name for p in profile.planes]}')
  totals = collections.Counter()
  for name, ns in per_op.items():
    totals[categories[name]] += ns / 1e6 / steps
  ops = sorted(((ns / 1e6 / steps, name, categories[name]) for name, ns in per_op.items()),
               reverse=True)
  return dict(totals), ops


def profile_project(workload, warmup: int, steps: int) -> tuple[dict, list]:
  """The project's train step, as benchmarks.throughput times it."""
  import jax
  from benchmarks import project

  step = project.compile_train_step(workload.prepared, jax.local_devices()[:1])
  return profile_xla(step, step.compiled.as_text(), workload.batch_size, warmup, steps)


def profile_flax(workload, warmup: int, steps: int) -> tuple[dict, list]:
  """The minimal Flax step (benchmarks/peers/flax_minimal.py), as benchmarks.throughput times it."""
  import jax
  from benchmarks import project
  from benchmarks.peers import flax_minimal

  batch = jax.device_put(project.synthetic_batch(
      workload.batch_size, workload.image_shape, workload.num_classes, workload.config.seed,
      pixels=False))
  compiled, state, _, _, _ = flax_minimal.compile_train_step(workload, batch)

  def step():
    nonlocal state
    state, metrics = compiled(state, batch)
    return state, metrics
  return profile_xla(step, compiled.as_text(), workload.batch_size, warmup, steps)


_TORCH_CATEGORIES = (
    ('conv backward (both)', ('convolution_backward',)),
    ('conv forward', ('convolution', 'conv2d')),
    ('batch norm', ('batch_norm',)),
    ('copy/transpose', ('copy_', 'contiguous', 'clone', 'to_copy', 'permute')),
    ('optimizer', ('_foreach', 'sgd')),
    ('fusion / elementwise', ('relu', 'threshold', 'add', 'mul', 'div', 'sum', 'mean', 'pad',
                              'slice', 'cat', 'fill', 'zero', 'softmax', 'nll', 'cross_entropy',
                              'avg_pool', 'adaptive', 'max_pool', 'linear', 'addmm', 'mm',
                              'empty', 'index')),
)


def torch_category(op: str) -> str:
  name = op.lower()
  for category, keys in _TORCH_CATEGORIES:
    if any(k in name for k in keys):
      return category
  return 'other'


def profile_torch(spec: dict) -> dict:
  """Runs in the subprocess: {'totals': {category: ms}, 'ops': [[ms, op, category]]}."""
  import torch
  from torch.nn import functional as F
  from torch.profiler import ProfilerActivity, profile

  from benchmarks.peers import torch_peers
  torch.manual_seed(0)
  model, _ = torch_peers.create_model(spec)
  model = model.to(memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=spec['learning_rate'],
                              momentum=spec['momentum'], weight_decay=spec['weight_decay'])
  h, w, c = spec['image_shape']
  images = torch.randn(spec['batch_size'], c, h, w).to(memory_format=torch.channels_last)
  labels = torch.randint(0, spec['num_classes'], (spec['batch_size'],))
  bf16 = spec['dtype'] == 'bfloat16'

  def step():
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
      loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()

  for _ in range(spec['warmup']):
    step()
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(spec['steps']):
      step()
  totals, ops = collections.Counter(), []
  for event in prof.key_averages():
    ms = event.self_cpu_time_total / 1e3 / spec['steps']
    if ms <= 0:
      continue
    category = torch_category(event.key)
    totals[category] += ms
    ops.append([ms, event.key, category])
  return {'totals': dict(totals), 'ops': sorted(ops, reverse=True)}


def _torch_side(workload) -> dict | None:
  import importlib.util
  if importlib.util.find_spec('torch') is None:
    print(f'torch is not installed in {sys.executable}: the PyTorch column is skipped '
          "(pip install -e '.[benchmark]' in a venv of its own).")
    return None
  spec = {**workload.torch_spec(), 'warmup': FLAGS.warmup, 'steps': FLAGS.steps}
  result = subprocess.run([sys.executable, '-m', 'benchmarks.op_profile', '--torch_spec',
                           json.dumps(spec)], stdout=subprocess.PIPE, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  lines = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')]
  if result.returncode or not lines:
    print(f'the PyTorch profile failed (exit {result.returncode}); its error is above')
    return None
  return json.loads(lines[-1][len('RESULT '):])


def _table(columns: dict) -> str:
  """One row per category, one column per profiled step ({name: {category: ms} or None})."""
  columns = {name: totals for name, totals in columns.items() if totals is not None}
  rows = ['| category | ' + ' | '.join(f'{name} ms/step' for name in columns) + ' |',
          '|---|' + '---|' * len(columns)]
  for category in CATEGORIES:
    cells = [totals.get(category) for totals in columns.values()]
    if all(c is None for c in cells):
      continue
    rows.append(f'| {category} | ' + ' | '.join('' if c is None else f'{c:.1f}' for c in cells)
                + ' |')
  rows.append('| **total busy time** | ' + ' | '.join(
      f'{sum(totals.values()):.1f}' for totals in columns.values()) + ' |')
  return '\n'.join(rows)


flags.DEFINE_string('torch_spec', None, 'Internal: run the PyTorch side with this JSON spec.')


def _workload():
  for name, low in (('warmup', 0), ('steps', 1), ('top', 0)):
    if FLAGS[name].value < low:  # --steps=0 profiled nothing, and failed on the empty profile.
      raise UserError(f'--{name}={FLAGS[name].value} must be at least {low}.')
  from benchmarks import workloads
  if FLAGS.config is not None:
    if FLAGS.workload is not None:
      raise UserError('give --workload or --config, not both')
    return workloads.from_config_flag(FLAGS['config'])
  name = FLAGS.workload or 'cifar_r20_fp32'
  if name not in workloads.WORKLOADS:
    raise UserError(f'--workload={name!r} is not one of {", ".join(workloads.WORKLOADS)}')
  return workloads.preset(name)


@cli.one_line_errors
def main(argv):
  del argv
  if FLAGS.torch_spec:
    print('RESULT ' + json.dumps(profile_torch(json.loads(FLAGS.torch_spec))), flush=True)
    return
  import jax
  workload = _workload()
  print(hardware.summary_line(hardware.describe(jax.local_devices()[:1])))
  print(', '.join(f'{k} {v}' for k, v in hardware.versions().items() if v))
  print(f'{workload.name}: batch {workload.batch_size}, {workload.dtype}; '
        f'{FLAGS.steps} profiled steps after {FLAGS.warmup}', flush=True)
  jax_totals, jax_ops = profile_project(workload, FLAGS.warmup, FLAGS.steps)
  flax_totals = flax_ops = None
  if FLAGS.flax:
    try:
      flax_totals, flax_ops = profile_flax(workload, FLAGS.warmup, FLAGS.steps)
    except ValueError as e:  # No minimal Flax net for this model.
      print(f'minimal Flax step skipped: {e}')
  torch_result = _torch_side(workload) if FLAGS.torch else None
  print(_table({'project (XLA)': jax_totals, 'minimal Flax (XLA)': flax_totals,
                'PyTorch eager': torch_result and torch_result['totals']}))
  for side, ops in (('project (XLA)', jax_ops), ('minimal Flax (XLA)', flax_ops),
                    ('PyTorch eager', torch_result and torch_result['ops'])):
    if ops:
      print(f'\nTop {FLAGS.top} ops, {side} (ms/step):')
      for ms, name, category in ops[:FLAGS.top]:
        print(f'  {ms:8.2f}  {name}  [{category}]')


if __name__ == '__main__':
  cli.define_config_flag('config', 'Config file of the step to profile, with --config.KEY=VALUE '
                                  'overrides; or give --workload.')
  app.run(main, flags_parser=functools.partial(cli.parse_flags))
