"""Running the trainer's command line in a subprocess, as a user would."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def env(devices: int = 1) -> dict:
  environ = dict(os.environ)
  environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  environ['JAX_PLATFORMS'] = 'cpu'
  return environ


def main_command(workdir, *overrides, config='configs/quickstart.py') -> list[str]:
  return [sys.executable, '-m', 'resnet_jax.main', f'--config={config}', f'--workdir={workdir}',
          *overrides]


def run_main(workdir, *overrides, config='configs/quickstart.py', devices=1, timeout=600):
  return subprocess.run(main_command(workdir, *overrides, config=config), cwd=ROOT,
                        env=env(devices), capture_output=True, text=True, timeout=timeout)


def checkpoint_steps(workdir) -> list[int]:
  root = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def final_params(workdir) -> dict:
  """The parameters, BN statistics and optimiser state of the newest checkpoint, as NumPy."""
  step = checkpoint_steps(workdir)[-1]
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state'
  # Restored as NumPy, so it reads whatever topology (process and device count) saved it.
  with ocp.PyTreeCheckpointer() as ckpt:
    metadata = ckpt.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    tree = ckpt.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return step, tree


def assert_trees_equal(a, b) -> None:
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
