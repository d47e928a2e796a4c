"""What every study shares: its command line, its budgets' policy and its base configs.

  python -m experiments.<study> --budget {smoke,cpu,paper} --results_dir DIR [--seeds N|S,S]
      [--steps N] [--depths D,D] [--dataset NAME] [--config.KEY=VALUE ...]
      [--cluster local|auto|ADDRESS] [--jobs N] [--cpus_per_run C] [--gpus_per_run G]
      [--resources NAME=N,...] [--processes_per_run N] [--print_commands]
"""

import argparse
import ast
import contextlib
import hashlib
import importlib
import json
import os

import ml_collections

from experiments import runner
from resnet_jax import cli
from resnet_jax.data import datasets
from resnet_jax.errors import UserError

BUDGETS = ('smoke', 'cpu', 'paper')
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
# The datasets of the table that have a config of the papers' CIFAR recipe (configs/<name>.py).
DATASETS = tuple(name for name in datasets.TABLE
                 if os.path.exists(os.path.join(CONFIGS, f'{name}.py')))


def base_config(dataset: str, arg: str | None = None):
  """configs/<dataset>.py's config, given `arg` (e.g. 'depth=56,placement=full_preact')."""
  return importlib.import_module(f'configs.{dataset}').get_config(arg)


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1 (argparse turns the ValueError into one line, exit 2)."""
  value = int(text)
  if value < 1:
    raise ValueError(text)
  return value


positive_int.__name__ = 'integer >= 1'  # What argparse's message calls it.


def positive_float(text: str) -> float:
  """argparse type: a number > 0."""
  value = float(text)
  if not value > 0:
    raise ValueError(text)
  return value


positive_float.__name__ = 'number > 0'


def non_negative_float(text: str) -> float:
  """argparse type: a number >= 0."""
  value = float(text)
  if not value >= 0:
    raise ValueError(text)
  return value


non_negative_float.__name__ = 'number >= 0'


def seed_list(text: str) -> tuple[int, ...]:
  """argparse type of --seeds: a count ('3': seeds 0, 1, 2) or a list ('3,4')."""
  if ',' not in text:
    return tuple(range(positive_int(text)))
  seeds = tuple(int(s) for s in text.split(',') if s.strip())
  if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
    raise ValueError(text)
  return seeds


def int_list(text: str) -> tuple[int, ...]:
  """argparse type: integers, comma-separated ('20,56')."""
  return tuple(positive_int(s) for s in text.split(','))


seed_list.__name__ = 'count (3) or list of seeds (3,4)'
int_list.__name__ = 'comma-separated list of integers >= 1'


def path(text: str) -> str:
  """argparse type of a folder or file: not empty, which would name the current directory."""
  if not text:
    raise ValueError(text)
  return text


path.__name__ = 'path (not empty)'


def resource_list(text: str) -> tuple[tuple[str, float], ...]:
  """argparse type: custom Ray resources, NAME=N comma-separated ('TPU=4')."""
  pairs = [part.partition('=') for part in text.split(',')]
  if any(not name or sep != '=' for name, sep, _ in pairs):
    raise ValueError(text)
  return tuple((name, positive_float(n)) for name, _, n in pairs)


resource_list.__name__ = 'list of NAME=N (TPU=4)'


# --select_on_validation: the paper's validation split of CIFAR (45k/5k of the training set) for
# choosing the checkpoint, and the test split for reporting it.
VALIDATION = {'train_split': 'train[:90%]', 'eval_split': 'train[90%:]', 'report_split': 'test'}


def add_flags(parser: argparse.ArgumentParser, depths: bool = True,
              validation: bool = False, init_seeds: bool = False) -> None:
  """The flags every study takes; `depths`: whether it takes --depths, `validation`: whether
  --select_on_validation (a study that reports test errors), `init_seeds`: whether
  --init_seeds (a study that measures nets at init)."""
  parser.add_argument('--budget', required=True, choices=BUDGETS,
                      help='smoke: minutes, checks the machinery; cpu: about 60 min on 2 CPU '
                           "cores; paper: the papers' recipe and number of runs.")
  parser.add_argument('--results_dir', required=True, type=path,
                      help='where the runs, tables, plots and results.json go; rerun with the '
                           'same directory to resume.')
  parser.add_argument('--seeds', type=seed_list, default=None,
                      help="a count (3: seeds 0, 1, 2) or a list (3,4) of seeds per arm; "
                           "default: the budget's.")
  parser.add_argument('--steps', type=positive_int, default=None,
                      help="training steps of every run; default: the budget's.")
  if depths:
    parser.add_argument('--depths', type=int_list, default=None,
                        help="depths, comma-separated (20,56); default: the budget's.")
  if init_seeds:
    parser.add_argument('--init_seeds', type=seed_list, default=None,
                        help="seeds of the init measurements, a count or a list; default: the "
                             "budget's.")
  if validation:
    parser.add_argument('--select_on_validation', action='store_true',
                        help="train on the first 90%% of the training split, keep the checkpoint "
                             'with the best accuracy on the last 10%% (45k/5k for CIFAR), and '
                             'report its test error.')
  parser.add_argument('--cluster', default='local',
                      help="where the runs train: 'local' (default), an embedded Ray instance on "
                           "this machine, started and stopped by the study; 'auto' or "
                           'HOST:PORT, a running Ray cluster.')
  parser.add_argument('--jobs', type=positive_int, default=1,
                      help='local only: runs at once, each with 1/jobs of the cores (default 1).')
  parser.add_argument('--cpus_per_run', type=positive_float, default=None,
                      help='CPUs each run (each process of it) asks Ray for; default: local, '
                           'cores / jobs; on a cluster, 1.')
  parser.add_argument('--gpus_per_run', type=non_negative_float, default=None,
                      help='GPUs each run (each process of it) asks for; a fraction shares a GPU '
                           '(0.25: four runs on one); 0 trains on CPUs. Default: where there are '
                           'GPUs, local, GPUs / jobs; on a cluster, 1; else 0.')
  parser.add_argument('--resources', type=resource_list, default=(),
                      help='custom Ray resources each run (each process of it) asks for, e.g. '
                           "TPU=4 for a TPU VM host's chips.")
  parser.add_argument('--processes_per_run', type=positive_int, default=1,
                      help='processes (hosts) of each run, joined by jax.distributed: a TPU pod '
                           "slice's hosts, or several GPU hosts.")
  parser.add_argument('--print_commands', action='store_true',
                      help='print one self-contained `python -m resnet_jax.main` command per '
                           'unfinished run, for another scheduler (SLURM, XManager), and start '
                           'nothing.')
  parser.add_argument('--dataset', choices=DATASETS, default='cifar10',
                      help='a dataset of resnet_jax/data/datasets.py with a configs/<name>.py.')
  parser.epilog = ('Any --config.KEY=VALUE (e.g. --config.optimizer=nesterov) is set in every '
                   "run's config; runs with such settings get names of their own.")


def leave_accelerators_to_runs() -> None:
  """The study's own JAX work (init measurements, the analyses after the sweep) runs on the CPU,
  unless JAX_PLATFORMS says otherwise. On a GPU JAX takes 75% of the memory at its start and keeps
  it, so the runs on that GPU would find none; a TPU host's chips open in one process only, so
  the runs there could not start at all."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if 'JAX_PLATFORMS' not in os.environ and not xla_bridge.backends_are_initialized():
    jax.config.update('jax_platforms', 'cpu')


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
  """The flags of add_flags, and the --config.KEY=VALUE overrides (args.overrides) every run
  gets. args.variant is '' for the budget as it is, else a suffix that names the changed
  settings (--steps, the overrides), so that their runs get workdirs of their own and finished
  runs of other settings stay as they are."""
  args, rest = parser.parse_known_args(argv)
  leave_accelerators_to_runs()
  args.overrides = []
  for item in rest:
    key, equals, value = item.removeprefix('--config.').partition('=')
    if not item.startswith('--config.') or not equals or not key:
      parser.error(f'unrecognized argument {item!r}; config keys are set as --config.KEY=VALUE')
    args.overrides.append((key, value))
  selected = getattr(args, 'select_on_validation', False)
  changed = {'steps': args.steps, 'config': sorted(args.overrides),
             **({'select_on_validation': True} if selected else {})}
  args.variant = ('' if args.steps is None and not args.overrides and not selected else
                  '-v' + hashlib.sha1(json.dumps(changed).encode()).hexdigest()[:6])
  args.report_split = VALIDATION['report_split'] if selected else None
  args.placement = runner.Placement(
      cluster=args.cluster, jobs=args.jobs, cpus_per_run=args.cpus_per_run,
      gpus_per_run=args.gpus_per_run, processes_per_run=args.processes_per_run,
      resources=args.resources)
  if not args.print_commands:  # Before anything is written: a placement that cannot work.
    runner.check_placement(args.placement)
  run = cli.enclosing_run(os.path.join(args.results_dir, 'results.json'))
  if run is not None:  # A run's folder typed for --results_dir: the study would write into it.
    raise UserError(f'--results_dir={args.results_dir} lies inside the training run {run}, whose '
                    'files only the trainer writes; give a folder outside it.')
  return args


def select_on_validation(config) -> None:
  """The splits of --select_on_validation (VALIDATION) in `config`, and the best checkpoint
  kept, which the runner then reports on VALIDATION['report_split']."""
  config.data.train_split = VALIDATION['train_split']
  config.data.eval_split = VALIDATION['eval_split']
  config.keep_best_checkpoint = True


def override(config, overrides) -> None:
  """Sets each (key, text) of --config.KEY=VALUE in `config`, the text read as the key's type;
  a key that does not exist or a value of another type is a UserError naming the flag."""
  for key, text in overrides:
    flag = f'--config.{key}={text}'
    *parents, last = key.split('.')
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or last not in node:
      raise UserError(f'{flag}: the config has no key {key!r}; configs/schema.py lists them.')
    kind = node.get_type(last)
    try:
      if text.lower() == 'none':
        value = None
      elif kind is bool:
        value = {'true': True, 'false': False}[text.lower()]
      elif kind in (tuple, list):
        value = tuple(ast.literal_eval(text))
      else:
        value = kind(text)
      node[last] = value
    except (KeyError, ValueError, TypeError, SyntaxError):
      raise UserError(f'{flag}: {key} takes {kind.__name__} values, and {text!r} is not one.'
                      ) from None


def train_error(row: dict) -> float:
  """The training error of a run (%), for a study whose row records the `subset` it trained on:
  on a subset (smoke, cpu), the error on that subset, its eval split; on the whole training set
  (paper), the running error of its last log window. NaN for a failed run."""
  if row['status'] != 'ok':
    return float('nan')
  return row['test_error'] if row['subset'] != 'train' else row['train_error']


def apply_budget(config, *, steps: int, batch_size: int, eval_split: str, evals: int,
                 paper: bool, warmup_steps: int | None = None, unrolled: bool) -> None:
  """Sets the schedule of a shortened run: the paper's shape (lr /10 at 50% and 75% of the
  steps) over `steps`, `evals` evaluations, and checkpoints at each of them.

  paper=True keeps the recipe's own numbers (64k steps, /10 at 32k and 48k) and follows
  fb.resnet.torch (Facebook's later Torch re-implementation; the papers ran in Caffe) where the
  papers are silent: Nesterov momentum, weight decay on BN and biases.
  """
  config.batch_size = batch_size
  config.data.eval_split = eval_split
  config.num_train_steps = steps
  if paper:
    config.optimizer = 'nesterov'
    config.decay_bn_and_bias = True
  else:
    if steps < 3:  # Else the two boundaries fall on one step, or on step 0.
      raise UserError(f'--steps={steps}: the shortened schedule divides the learning rate at '
                      '50% and 75% of the steps, which needs at least 3 steps.')
    config.lr_boundaries = (steps // 2, steps * 3 // 4)
    if warmup_steps is not None:
      config.warmup_steps = warmup_steps
  config.eval_every_steps = max(1, steps // evals)
  config.checkpoint_every_steps = config.eval_every_steps
  # Train records that end exactly at each eval, a few per eval interval (for the curves).
  every = config.eval_every_steps
  config.log_every_steps = next((every // k for k in range(2, every + 1)
                                 if every % k == 0 and every // k <= 100), 1)
  config.eval_batch_size = min(config.eval_batch_size, 500)
  if unrolled:
    # One parameter layout on every machine: scan=None resolves by backend (an accelerator
    # scans the nets of 110+ layers, the CPU only 1001 and 1202), so a study resumed or rerun
    # elsewhere meets its own checkpoints' layout. On CPU unrolled is also the faster
    # (docs/benchmarks.md).
    config.model.scan = False


def check_runs(runs) -> None:
  """Every run's config validated, finalised and its net built (no weights), before anything
  starts: a bad value is one line (a UserError naming the key) and no results folder is made."""
  from resnet_jax.train import run as run_lib  # pylint: disable=g-import-not-at-top
  for r in runs:
    run_lib.model(run_lib.prepare(r.config, open_data=False).config)


# Where the papers are silent, every study's `paper` budget follows fb.resnet.torch; the
# shortened budgets keep the project's defaults. Each study lists these with its own.
COMMON_DEVIATIONS = (
    'Where the paper is silent, the paper budget follows fb.resnet.torch, a later Torch '
    're-implementation by others (the papers ran in Caffe): SGD with Nesterov momentum 0.9 and '
    'weight decay 1e-4 on every parameter, BN scales and biases included.',
    'Inputs are normalised per channel (mean and std of the training set), not by the '
    'per-pixel mean subtraction of the 2015 paper.',
    'Every budget ends its warm-up after a fixed number of steps (config.warmup_rule=steps), '
    'not on the 2015 text\'s "until the training error is below 80%" '
    '(config.warmup_rule=train_error), and initialises the classifier with lecun_normal '
    "(flax's default; config.model.head_init): the papers do not say.",
)


@contextlib.contextmanager
def results_lock(results_dir: str):
  """The results dir, made and locked for the whole of a study's command: a second study on it
  is refused at once, in one line, before it writes anything (as a second run on a workdir is)."""
  from resnet_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.check_writable(results_dir, flag='--results_dir')
  with workdir_lib.lock(results_dir, flag='--results_dir', holder='study'):
    yield


def sweep(runs, args) -> list[dict]:
  """The rows of `runs`, trained on Ray where the command line says (experiments.runner)."""
  return runner.run_sweep(runs, args.results_dir, args.placement)


def print_commands(runs, args) -> int:
  """--print_commands: one self-contained trainer command per unfinished run; nothing runs."""
  for line in runner.commands(runs, args.results_dir):
    print(line)
  return 0
