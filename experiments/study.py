"""What every study shares: its command line, its budgets' policy and its base configs.

  python -m experiments.<study> --budget {smoke,cpu,paper} --results_dir DIR [--seeds N]
      [--jobs N] [--dataset NAME]
"""

import argparse
import importlib
import os

from resnet_jax.data import datasets

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


def add_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--budget', required=True, choices=BUDGETS,
                      help='smoke: minutes, checks the machinery; cpu: about 45 min on 2 CPU '
                           "cores; paper: the papers' recipe and number of runs.")
  parser.add_argument('--results_dir', required=True,
                      help='where the runs, tables, plots and results.json go; rerun with the '
                           'same directory to resume.')
  parser.add_argument('--seeds', type=positive_int, default=None,
                      help="seeds per cell (default: the budget's).")
  parser.add_argument('--jobs', type=positive_int, default=1,
                      help='runs at once, each in its own process (default 1: in this process).')
  parser.add_argument('--dataset', choices=DATASETS, default='cifar10',
                      help='a dataset of resnet_jax/data/datasets.py with a configs/<name>.py.')


def apply_budget(config, *, steps: int, batch_size: int, eval_split: str, evals: int,
                 paper: bool, warmup_steps: int | None = None, unrolled: bool) -> None:
  """Sets the schedule of a shortened run: the paper's shape (lr /10 at 50% and 75% of the
  steps) over `steps`, `evals` evaluations, and checkpoints at each of them.

  paper=True keeps the recipe's own numbers (64k steps, /10 at 32k and 48k) and follows
  fb.resnet.torch where the papers are silent: Nesterov momentum, weight decay on BN and biases.
  """
  config.batch_size = batch_size
  config.data.eval_split = eval_split
  config.num_train_steps = steps
  if paper:
    config.optimizer = 'nesterov'
    config.decay_bn_and_bias = True
  else:
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


# Where the papers are silent, every study's `paper` budget follows the authors' code; the
# shortened budgets keep the project's defaults. Each study lists these with its own.
COMMON_DEVIATIONS = (
    "Where the paper is silent, the authors' code (fb.resnet.torch) is followed in the paper "
    'budget: SGD with Nesterov momentum 0.9 and weight decay 1e-4 on every parameter, BN '
    'scales and biases included.',
    'Inputs are normalised per channel (mean and std of the training set), not by the '
    'per-pixel mean subtraction of the 2015 paper.',
)
