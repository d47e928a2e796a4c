"""Train-step, training-loop and input-pipeline throughput, side by side with peers.

  python -m benchmarks.throughput --config=configs/cifar10_resnet20.py [--config.KEY=VALUE ...]
  python -m benchmarks.throughput --workloads=cifar_r20_fp32,cifar_r56_bf16 --peers=project,flax
  python -m benchmarks.throughput --workloads=all        # every preset (benchmarks/workloads.py)
  python -m benchmarks.throughput --config=configs/quickstart.py --steps=3 --warmup=1 \
      --loop_steps=8 --loop_warmup=2 --input_batches=3    # a quick check, seconds

For each workload (a config file with its overrides, or a preset of benchmarks/workloads.py) it
measures, on one machine, in one process per preset (each with the XLA_FLAGS its config.xla asks for,
resnet_jax/xla_flags.py, as the trainer would run it):

* project: the project's train step alone (benchmarks/project.py), on a synthetic batch that
  stays on the devices: lower + compile time (jax AOT), median step time and img/s, matrix FLOPs
  per step (benchmarks.flops), FLOP/s and MFU against the device's peak (benchmarks/hardware.py,
  or --peak_flops), peak device memory (n/a on CPU); then the whole training loop on the config's real data
  pipeline and worker_count (steady-state img/s), and that input pipeline alone.
* flax: a minimal Flax ResNet with a plain jax.jit step (benchmarks/peers/flax_minimal.py).
* torch: PyTorch, eager and torch.compile (benchmarks/peers/torch_peers.py), where torch is
  installed; it is an optional extra, so without it one line says so and they are skipped.

Every implementation is timed the same way (benchmarks/timing.py): --warmup untimed steps, then
the median of --steps steps, each waited for. The project and the Flax peer are timed in turns,
a step of each (`timing.time_interleaved`), so that the machine's drift cancels out of their
ratio; PyTorch runs in a subprocess after them. `project/impl` is the project's img/s per device
over the peer's (peers run on one device); above 1 the project is faster. A table is printed and
one row per implementation appended to --csv (columns: COLUMNS). docs/benchmarks.md describes
the method and holds the measured tables.
"""

import csv
import datetime
import difflib
import functools
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile

# The PyTorch peers run in a subprocess while this process holds the accelerator: JAX takes
# device memory as it needs it instead of 75% of it up front (set it to 'true' to override).
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

# pylint: disable=g-import-not-at-top
import jax
from absl import app, flags

from benchmarks import hardware, timing, workloads
from resnet_jax import cli
from resnet_jax.errors import RunError, UserError
# benchmarks.project and the peers are imported when the flags have been checked: a mistake on
# the command line then fails in a second, before orbax, tfds and grain load.

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEERS = ('project', 'flax', 'torch')

COLUMNS = (
    'run_id', 'time', 'workload', 'config', 'overrides', 'impl', 'model', 'batch_size',
    'image_shape', 'dtype', 'warmup', 'steps', 'step_ms', 'img_per_s', 'project_over_impl',
    'lower_s', 'compile_s', 'gflop_per_step', 'tflop_per_s', 'peak_flops_per_device', 'mfu',
    'peak_flops_source', 'peak_mem_bytes', 'step_mem_bytes', 'data_pipeline', 'worker_count',
    'loop_steps_timed', 'loop_img_per_s', 'input_img_per_s', 'input_over_step', 'platform',
    'device_kind', 'device_count', 'cpu_model', 'cpu_count', 'load_avg_1m', 'xla_flags', 'jax',
    'jaxlib', 'flax', 'optax', 'numpy', 'torch', 'torchvision', 'note')

FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag('config', 'Config file FILE or FILE:ARG of one workload; override '
                                  'keys with --config.KEY=VALUE. Or give --workloads.')
  flags.DEFINE_list('workloads', None, f'Presets to run instead of --config: '
                    f'{", ".join(workloads.WORKLOADS)}, or all.')
  flags.DEFINE_list('peers', list(PEERS), f'What to time, of {", ".join(PEERS)}.')
  flags.DEFINE_integer('warmup', 5, 'Untimed steps before the timed ones (every implementation).')
  flags.DEFINE_integer('steps', 50, 'Timed steps; the median is reported (every implementation).')
  flags.DEFINE_integer('loop_steps', 300, 'Steps of the training-loop run on real data; 0 skips '
                       'it.')
  flags.DEFINE_integer('loop_warmup', 50, 'Loop steps left out of its img/s (compilation, the '
                       'pipeline filling up).')
  flags.DEFINE_integer('input_batches', 50, 'Batches timed from the input pipeline alone (after '
                       '--warmup); 0 skips it.')
  flags.DEFINE_integer('num_devices', 1, 'Devices the project runs on (peers run on one).')
  flags.DEFINE_list('torch_variants', ['eager', 'compile'], 'PyTorch peers to run.')
  flags.DEFINE_float('peak_flops', None, 'Peak FLOP/s of one device, for MFU; default: the '
                     'table in benchmarks/hardware.py.')
  flags.DEFINE_string('csv', 'runs/benchmarks/throughput.csv', 'CSV to append the rows to.')
  # Internal: a workload's own process (see measure_in_processes).
  flags.DEFINE_string('run_id', None, 'Internal: the run id of the rows.')
  flags.DEFINE_string('rows_to', None, 'Internal: write the rows as JSON here, print no table '
                      'and append no CSV.')


def preset_names() -> list[str] | None:
  """The presets that --workloads names, checked; None for --config."""
  if (FLAGS.config is None) == (FLAGS.workloads is None):
    raise UserError('give either --config=FILE (one workload, with --config.KEY=VALUE '
                    'overrides) or --workloads=NAME,... (presets: '
                    f'{", ".join(workloads.WORKLOADS)}, all), not both or neither.')
  if FLAGS.config is not None:
    return None
  names = list(workloads.WORKLOADS) if FLAGS.workloads == ['all'] else FLAGS.workloads
  unknown = [n for n in names if n not in workloads.WORKLOADS]
  if unknown:
    close = difflib.get_close_matches(unknown[0], list(workloads.WORKLOADS), 1, 0.6)
    raise UserError(f'--workloads: no preset {unknown[0]!r}'
                    f'{f"; did you mean {close[0]}?" if close else "."} Presets: '
                    f'{", ".join(workloads.WORKLOADS)}, all.')
  return names


def workloads_from_flags() -> list[workloads.Workload]:
  """The workloads of --config or --workloads, each with its config.xla applied first (so only
  the first takes effect in one process: measure_in_processes runs one per process)."""
  names = preset_names()
  if names is None:
    return [workloads.from_config_flag(FLAGS['config'])]
  return [workloads.preset(name) for name in names]


def check_flags() -> None:
  # An empty list would time nothing and end with '0 rows appended', exit 0.
  if not FLAGS.peers:
    raise UserError(f'--peers is empty; give one or more of {", ".join(PEERS)}.')
  if 'torch' in FLAGS.peers and not FLAGS.torch_variants:
    raise UserError('--torch_variants is empty; give eager, compile or both, or leave torch out '
                    'of --peers.')
  unknown = [p for p in FLAGS.peers if p not in PEERS]
  if unknown:
    raise UserError(f'--peers: {unknown[0]!r} is not one of {", ".join(PEERS)}.')
  for name, low in (('warmup', 1), ('steps', 1), ('loop_steps', 0), ('loop_warmup', 0),
                    ('input_batches', 0), ('num_devices', 1)):
    if FLAGS[name].value < low:
      raise UserError(f'--{name}={FLAGS[name].value} must be at least {low}.')
  if FLAGS.loop_steps and FLAGS.loop_warmup >= FLAGS.loop_steps:
    raise UserError(f'--loop_warmup={FLAGS.loop_warmup} must be below --loop_steps='
                    f'{FLAGS.loop_steps} (or --loop_steps=0 to skip the loop).')
  bad = [v for v in FLAGS.torch_variants if v not in ('eager', 'compile')]
  if bad:
    raise UserError(f'--torch_variants: {bad[0]!r} is not one of eager, compile.')
  if FLAGS.peak_flops is not None and FLAGS.peak_flops <= 0:
    raise UserError(f'--peak_flops={FLAGS.peak_flops} must be positive (FLOP/s of one device).')


def _torch_peers(workload: workloads.Workload) -> dict:
  """The torch_peers subprocess's result, or why there is none."""
  if importlib.util.find_spec('torch') is None:
    return {'rows': [], 'skipped': [
        f'torch is not installed in {sys.executable}: the PyTorch peers are skipped; install '
        "them into a separate venv with pip install -e '.[benchmark]'"]}
  spec = {**workload.torch_spec(), 'warmup': FLAGS.warmup, 'steps': FLAGS.steps,
          'variants': FLAGS.torch_variants}
  result = subprocess.run([sys.executable, '-m', 'benchmarks.peers.torch_peers', json.dumps(spec)],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
  lines = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')]
  if result.returncode or not lines:
    return {'rows': [], 'skipped': [f'the PyTorch peers failed (exit {result.returncode}); '
                                    'their error is above']}
  return json.loads(lines[-1][len('RESULT '):])


def measure(workload: workloads.Workload, devices, machine: dict) -> tuple[list[dict], list[str]]:
  """The rows of one workload (project first) and notes on what was skipped and why."""
  from benchmarks import project
  from benchmarks.peers import flax_minimal

  config = workload.config
  peak, peak_source = hardware.peak_flops(machine['device_kind'], workload.dtype,
                                          FLAGS.peak_flops)
  base = {'workload': workload.name, 'config': workload.config_file,
          'overrides': workload.overrides, 'batch_size': workload.batch_size,
          'image_shape': 'x'.join(map(str, workload.image_shape)), 'dtype': workload.dtype,
          'warmup': FLAGS.warmup, 'steps': FLAGS.steps}
  notes = []

  def flops_columns(flops, step_s, num_devices):
    if flops is None:
      return {'gflop_per_step': 'n/a', 'tflop_per_s': 'n/a', 'mfu': 'n/a'}
    rate = flops / step_s
    return {'gflop_per_step': flops / 1e9, 'tflop_per_s': rate / 1e12,
            'peak_flops_per_device': peak or 'n/a', 'peak_flops_source': peak_source,
            'mfu': rate / (peak * num_devices) if peak else 'n/a'}

  # The JAX implementations are compiled first and then timed in turns, a step of each
  # (benchmarks.timing.time_interleaved): a drift of the machine's speed during the run falls on
  # both, and not into their ratio.
  jax_steps, built = {}, {}
  step = flax_step = flax_state = compiled = None
  if 'project' in FLAGS.peers:
    print(f'[{workload.name}] project: compiling the train step ...', flush=True)
    step = project.compile_train_step(workload.prepared, devices)
    flops, step_mem = project.step_stats(step)
    jax.block_until_ready(step())  # Alone, so that the device's peak memory is the project's.
    built['project'] = dict(lower_s=step.lower_s, compile_s=step.compile_s, flops=flops,
                            step_mem=step_mem, peak_mem=hardware.peak_memory_bytes(devices[0]))
    jax_steps['project'] = step
  if 'flax' in FLAGS.peers:
    print(f'[{workload.name}] flax: compiling the minimal Flax step ...', flush=True)
    try:
      model_name = _flax_model_name(workload)
      batch = jax.device_put(project.synthetic_batch(workload.batch_size, workload.image_shape,
                                                     workload.num_classes, config.seed,
                                                     pixels=False))
      compiled, flax_state, lower_s, compile_s, flops = flax_minimal.compile_train_step(
          workload, batch)
    except ValueError as e:
      notes.append(f'{workload.name}: flax peer skipped: {e}')
    else:
      step_mem = project.compiled_memory(compiled)

      def flax_step():
        nonlocal flax_state
        flax_state, metrics = compiled(flax_state, batch)
        return flax_state, metrics

      built['flax'] = dict(lower_s=lower_s, compile_s=compile_s, flops=flops, step_mem=step_mem,
                           model=model_name)
      jax_steps['flax'] = flax_step
  times = {}
  if jax_steps:
    print(f'[{workload.name}] timing {" and ".join(jax_steps)} in turns ({FLAGS.warmup} warm-up'
          f' and {FLAGS.steps} timed steps each) ...', flush=True)
    times = timing.time_interleaved(jax_steps, jax.block_until_ready, warmup=FLAGS.warmup,
                                    steps=FLAGS.steps)
    # Free their states and executables: the loop below builds its own.
    jax_steps = step = flax_step = flax_state = compiled = None

  rows, project_img_s = [], None
  if 'project' in times:
    step_times, info = times['project'], built['project']
    step_img_s = step_times.images_per_s(workload.batch_size)
    project_img_s = step_img_s / len(devices)  # Per device: each peer runs on one.
    row = {**base, 'impl': 'project',
           'model': (f'{config.model.family} ResNet-{config.model.depth} '
                     f'{config.model.placement} ({config.model.shortcut})'),
           'step_ms': 1e3 * step_times.median_s, 'img_per_s': step_img_s,
           'project_over_impl': 1.0, 'lower_s': info['lower_s'], 'compile_s': info['compile_s'],
           **flops_columns(info['flops'], step_times.median_s, len(devices)),
           'peak_mem_bytes': 'n/a' if info['peak_mem'] is None else info['peak_mem'],
           'step_mem_bytes': info['step_mem'] or 'n/a',
           'data_pipeline': workload.data_pipeline, 'worker_count': config.data.worker_count}
    if workload.data_problem and (FLAGS.loop_steps or FLAGS.input_batches):
      notes.append(f'{workload.name}: no real data, so no loop or input figures: '
                   f'{workload.data_problem}')
    elif FLAGS.loop_steps:
      print(f'[{workload.name}] project: {FLAGS.loop_steps} steps of the training loop on '
            f'{config.data.dataset} ({workload.data_pipeline} pipeline, worker_count '
            f'{config.data.worker_count}) ...', flush=True)
      loop_img_s, measured = project.time_training_loop(
          config, devices, steps=FLAGS.loop_steps, warmup=FLAGS.loop_warmup)
      row.update(loop_steps_timed=measured, loop_img_per_s=loop_img_s)
    if FLAGS.input_batches and not workload.data_problem:
      if workload.data_pipeline == 'device':
        notes.append(f'{workload.name}: input img/s is the host (grain) pipeline of '
                     'create_train_iterator, which the device pipeline does not use')
      print(f'[{workload.name}] project: the input pipeline alone ...', flush=True)
      input_img_s = project.time_input_pipeline(config, warmup=FLAGS.warmup,
                                                batches=FLAGS.input_batches)
      row.update(input_img_per_s=input_img_s, input_over_step=input_img_s / step_img_s)
    rows.append(row)

  def ratio(img_s):
    return project_img_s / img_s if project_img_s else ''

  if 'flax' in times:
    step_times, info = times['flax'], built['flax']
    img_s = step_times.images_per_s(workload.batch_size)
    rows.append({**base, 'impl': 'flax_minimal', 'model': info['model'],
                 'step_ms': 1e3 * step_times.median_s, 'img_per_s': img_s,
                 'project_over_impl': ratio(img_s), 'lower_s': info['lower_s'],
                 'compile_s': info['compile_s'],
                 **flops_columns(info['flops'], step_times.median_s, 1),
                 'step_mem_bytes': info['step_mem'] or 'n/a'})

  if 'torch' in FLAGS.peers:
    print(f'[{workload.name}] torch: timing the PyTorch peers ({", ".join(FLAGS.torch_variants)})'
          ' in a subprocess ...', flush=True)
    result = _torch_peers(workload)
    notes += [f'{workload.name}: {line}' for line in result['skipped']]
    for peer in result['rows']:
      img_s = workload.batch_size / peer['step_s']
      rows.append({**base, 'impl': peer['impl'], 'model': peer['peer_model'],
                   'step_ms': 1e3 * peer['step_s'], 'img_per_s': img_s,
                   'project_over_impl': ratio(img_s),
                   'compile_s': peer['compile_s'] if peer['compile_s'] is not None else '',
                   'peak_mem_bytes': peer['peak_mem_bytes'] or 'n/a',
                   'note': f'torch on {peer["device"]}, {peer["threads"]} threads'})
  return rows, notes


def _flax_model_name(workload) -> str:
  from benchmarks.peers import flax_minimal
  flax_minimal.create_model(workload.family, workload.depth, workload.num_classes, 'float32')
  return (f'cifar ResNet-{workload.depth} (A)' if workload.family == 'cifar'
          else f'imagenet ResNet-{workload.depth}')


def check_csv(path: pathlib.Path) -> bool:
  """True if `path` is to be started (with a header); UserError if it cannot be appended to
  (checked by opening it, before any measuring) or has other columns."""
  if path.is_dir():
    raise UserError(f'--csv={path} is a directory; give a file name, e.g. '
                    f'{path / "throughput.csv"}.')
  under = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
  if under is not None:
    raise UserError(f'--csv={path} lies under {under}, which is a file; give another path.')
  run = cli.enclosing_run(str(path))
  if run is not None:
    raise UserError(f'--csv={path} lies inside the training run {run}, whose files only the '
                    'trainer writes; give a path outside it.')
  existed = path.exists()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a'):
      pass
    if not existed:
      path.unlink()  # Proven writable; it is written when there are rows.
  except OSError as e:
    raise UserError(f'--csv={path} cannot be written ({e.strerror}); give another path.') from None
  if path.exists() and path.stat().st_size:
    with open(path, newline='') as f:
      header = next(csv.reader(f), [])
    if tuple(header) != COLUMNS:
      raise UserError(f'--csv={path} has other columns than this benchmark writes (an older '
                      'version?); give another --csv.')
    return False
  return True


def append_csv(path: pathlib.Path, rows: list[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  new = check_csv(path)
  with open(path, 'a', newline='') as f:
    writer = csv.DictWriter(f, COLUMNS, restval='')
    if new:
      writer.writeheader()
    writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)


def _csv_value(value):
  if isinstance(value, float):
    return f'{value:.6g}'
  return value


TABLE = (('workload', 'workload', '{}'), ('impl', 'impl', '{}'), ('model', 'model', '{}'),
         ('batch', 'batch_size', '{}'), ('dtype', 'dtype', '{}'), ('step ms', 'step_ms', '{:.2f}'),
         ('img/s', 'img_per_s', '{:,.0f}'), ('project/impl', 'project_over_impl', '{:.2f}'),
         ('compile s', 'compile_s', '{:.2f}'), ('loop img/s', 'loop_img_per_s', '{:,.0f}'),
         ('input img/s', 'input_img_per_s', '{:,.0f}'), ('TFLOP/s', 'tflop_per_s', '{:.3g}'),
         ('MFU', 'mfu', '{:.1%}'), ('peak mem', 'peak_mem_bytes', '{}'))


def _cell(row, key, fmt) -> str:
  value = row.get(key, '')
  if key == 'peak_mem_bytes' and isinstance(value, int):
    return f'{value / 2**30:.2f} GiB'
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return fmt.format(value)
  return str(value)


def table(rows: list[dict]) -> str:
  """A Markdown table of the rows, in the columns of TABLE."""
  cells = [[name for name, _, _ in TABLE]] + [[_cell(r, k, f) for _, k, f in TABLE] for r in rows]
  widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE))]
  lines = ['| ' + ' | '.join(c.ljust(w) for c, w in zip(line, widths)) + ' |' for line in cells]
  lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
  return '\n'.join(lines)


def measure_here(run_id: str) -> tuple[list[dict], list[str], list[str]]:
  """(rows, notes, hardware lines) of the workloads of the flags, measured in this process."""
  workloads = workloads_from_flags()
  if FLAGS.num_devices > jax.device_count():
    raise UserError(f'--num_devices={FLAGS.num_devices}, but there are {jax.device_count()} '
                    'devices.')
  devices = jax.devices()[:FLAGS.num_devices]
  machine = hardware.describe(devices)  # XLA_FLAGS included, as config.xla left them.
  versions = hardware.versions()
  rows, notes = [], []
  for workload in workloads:
    workload_rows, workload_notes = measure(workload, devices, machine)
    rows += workload_rows
    notes += workload_notes
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    cached = (f'JAX\'s persistent compilation cache is on ({cache}): compile_s is a cache load '
              'where it hit')
    notes.append(cached)
    for row in rows:
      if row['impl'] in ('project', 'flax_minimal'):
        row['note'] = cached
  now = datetime.datetime.now().isoformat(timespec='seconds')
  rows = [{'run_id': run_id, 'time': now, **row, **machine, **versions} for row in rows]
  lines = [f'hardware: {hardware.summary_line(machine)}',
           'versions: ' + ', '.join(f'{k} {v}' for k, v in versions.items() if v)]
  return rows, notes, lines


def measure_in_processes(names: list[str], run_id: str) -> tuple[list[dict], list[str],
                                                                  list[str], list[str]]:
  """measure_here for each preset in a process of its own, with this command's flags; also
  returns the presets whose process failed.

  XLA reads its flags once per process, and each workload's config.xla may ask for others (the
  bfloat16 ones turn XLA:CPU's concurrency-optimised scheduler off): a workload in its own
  process is timed as `python -m resnet_jax.main` would train it.
  """
  rows, notes, lines, failed = [], [], [], []
  with tempfile.TemporaryDirectory(prefix='resnet_jax_bench_') as tmp:
    for name in names:
      out = os.path.join(tmp, f'{name}.json')
      # absl takes the last of a repeated flag: these override the command's own.
      argv = [sys.executable, '-m', 'benchmarks.throughput', *sys.argv[1:],
              f'--workloads={name}', f'--run_id={run_id}', f'--rows_to={out}']
      print(f'[{name}] in a process of its own ...', flush=True)
      code = subprocess.run(argv, cwd=os.getcwd(), check=False).returncode
      if code or not os.path.exists(out):
        notes.append(f'{name}: its process failed (exit {code}); its error is above')
        failed.append(name)
        continue
      with open(out) as f:
        result = json.load(f)
      rows += result['rows']
      notes += result['notes']
      # The load average and XLA_FLAGS are each process's own.
      lines += [l if l.startswith('versions') else f'[{name}] {l}' for l in result['lines']
                if l not in lines]
  if failed and not rows:
    raise RunError(f'no workload could be measured ({", ".join(failed)}); the errors are above.')
  return rows, notes, lines, failed


@cli.one_line_errors
def main(argv):
  del argv  # cli.parse_flags rejects arguments that are no flags.
  cli.quiet_library_logs()
  check_flags()
  if not FLAGS.rows_to:
    check_csv(pathlib.Path(FLAGS.csv))  # Now, not after minutes of timing.
  names = preset_names()
  run_id = FLAGS.run_id or (datetime.datetime.now().strftime('%Y%m%dT%H%M%S') +
                            f'-{os.getpid()}')
  failed = []
  if names is not None and len(names) > 1:
    rows, notes, lines, failed = measure_in_processes(names, run_id)
  else:
    rows, notes, lines = measure_here(run_id)
  if FLAGS.rows_to:  # A workload's own process: its parent reports.
    with open(FLAGS.rows_to, 'w') as f:
      json.dump({'rows': rows, 'notes': notes, 'lines': lines}, f)
    return
  print()
  print(table(rows))
  print()
  for line in lines:
    print(line)
  peak_sources = sorted({r['peak_flops_source'] for r in rows if r.get('peak_flops_source')})
  for source in peak_sources:
    print(f'peak FLOP/s: {source}')
  for note in notes:
    print(f'note: {note}')
  path = pathlib.Path(FLAGS.csv)
  append_csv(path, rows)
  print(f'{len(rows)} rows appended to {path}')
  if failed:  # The rows above are what was measured; a script must not take it for all of it.
    raise RunError(f'{", ".join(failed)} could not be measured; the errors are above.')


def run():
  define_flags()
  app.run(main, flags_parser=functools.partial(cli.parse_flags))


if __name__ == '__main__':
  run()
