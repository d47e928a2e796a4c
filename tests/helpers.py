"""Running the trainer's command line in a subprocess, as a user would."""

import contextlib
import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = pathlib.Path(__file__).resolve().parents[1]


# Every subprocess a test starts gets this long to finish: a guard against a hang, not a limit on
# the work, which on a busy 2-core machine can take many times its idle time (issue 20).
HANG_S = 3600


def env(devices: int = 1) -> dict:
  environ = dict(os.environ)
  environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  environ['JAX_PLATFORMS'] = 'cpu'
  return environ


def main_command(workdir, *overrides, config='configs/quickstart.py') -> list[str]:
  return [sys.executable, '-m', 'resnet_jax.main', f'--config={config}', f'--workdir={workdir}',
          *overrides]


def run_main(workdir, *overrides, config='configs/quickstart.py', devices=1, timeout=HANG_S):
  return subprocess.run(main_command(workdir, *overrides, config=config), cwd=ROOT,
                        env=env(devices), capture_output=True, text=True, timeout=timeout)


def interrupt(workdir, sig, *overrides, config='configs/quickstart.py'):
  """Starts a run, waits for its first checkpoint, then sends `sig`; returns the exit code and
  what it printed on stderr."""
  proc = subprocess.Popen(main_command(workdir, *overrides, config=config), cwd=ROOT, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not checkpoint_steps(workdir) and time.time() < deadline:
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.2)
  proc.send_signal(sig)
  proc.wait(timeout=HANG_S)
  return proc.returncode, proc.stderr.read()


def run_distributed(workdir, *overrides, num_processes=2, devices_per_process=2,
                    config='configs/quickstart.py', timeout=HANG_S) -> list[str]:
  """Runs the trainer as `num_processes` jax.distributed processes on this host (a coordinator on
  a free local port), waits for all of them, asserts each exited 0, and returns their output."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      main_command(workdir, *overrides,
                   f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                   f'--config.distributed.num_processes={num_processes}',
                   f'--config.distributed.process_id={i}', config=config),
      cwd=ROOT, env=env(devices=devices_per_process), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(num_processes)]
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def train_losses(workdir) -> list[float]:
  """The train/loss column of a workdir's metrics.jsonl, in step order."""
  with open(pathlib.Path(workdir) / 'metrics.jsonl') as f:
    return [r['train/loss'] for r in map(json.loads, f) if 'train/loss' in r]


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


# Imports what the command lines import (not the command lines themselves, which run as __main__)
# once, then forks a child per command line. JAX starts no thread before its first device is
# used, so each child starts as cleanly as `python -m`.
_FORKED_RUNS = r"""
import json, os, runpy, sys, tempfile, traceback
import resnet_jax.config_check, resnet_jax.train.loop

def run(module, args, extra_env):
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    pid = os.fork()
    if pid == 0:
      code = 1
      try:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        os.environ.update(extra_env)
        sys.argv = [module, *args]
        runpy.run_module(module, run_name='__main__', alter_sys=True)
        code = 0
      except SystemExit as e:
        if isinstance(e.code, str):
          print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
      except BaseException:
        traceback.print_exc()
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    out.seek(0)
    err.seek(0)
    return [code, out.read().decode(errors='replace'), err.read().decode(errors='replace')]

json.dump([run(*command) for command in json.load(sys.stdin)], sys.stdout)
"""


def run_modules(commands, devices=1, timeout=HANG_S) -> list[subprocess.CompletedProcess]:
  """Runs each `(module, args, extra_env)` as `python -m module *args` would, from the repository
  root, and returns what each returned and printed.

  One interpreter imports JAX and the trainer once and forks a child per command, so a table of
  command lines that fail before training costs a second, not an import of JAX each.
  """
  commands = [(module, [str(a) for a in args], dict(extra_env or {}))
              for module, args, extra_env in commands]
  driver = subprocess.run([sys.executable, '-c', _FORKED_RUNS], input=json.dumps(commands),
                          cwd=ROOT, env=env(devices), capture_output=True, text=True,
                          timeout=timeout)
  assert driver.returncode == 0, driver.stderr[-3000:]
  return [subprocess.CompletedProcess([module, *args], code, stdout, stderr)
          for (module, args, _), (code, stdout, stderr)
          in zip(commands, json.loads(driver.stdout))]


def workdir_files(workdir) -> list[str]:
  """What a run wrote to `workdir`; the run's lock file, taken before the data is read, aside."""
  root = pathlib.Path(workdir)
  return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.name != '.lock')


def tree_digest(root) -> dict:
  """{relative path: sha256} of every file under `root`: to show that nothing there changed."""
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


def shared_tfds_dataset(name: str = 'cifar10', version: str = '3.0.2') -> pathlib.Path | None:
  """The prepared dataset under TFDS_DATA_DIR (tests/conftest.py points it at ../shared), or
  None."""
  path = pathlib.Path(os.environ.get('TFDS_DATA_DIR', '/nonexistent')) / name / version
  return path if (path / 'dataset_info.json').exists() else None


def tfds_copy(source: pathlib.Path, data_dir: pathlib.Path) -> pathlib.Path:
  """A copy of the dataset version directory `source` under `data_dir` (<data_dir>/<name>/<version>)
  made of symbolic links, so a test damages one file of it without copying the rest or touching
  the original: damage a file by unlinking it and writing a new one."""
  target = data_dir / source.parent.name / source.name
  target.mkdir(parents=True)
  for path in source.iterdir():
    (target / path.name).symlink_to(path)
  return target


def damage(version_dir: pathlib.Path, kind: str, filename: str) -> pathlib.Path:
  """Damages `filename` in a tfds_copy: 'delete', 'truncate' (to its first half), 'garbage'
  (random bytes), 'empty' or 'corrupt' (bytes in its middle inverted: the file keeps its size
  and its first and last records). Returns its path."""
  path = version_dir / filename
  original = path.resolve()
  path.unlink()  # Never write through the link into the shared data.
  if kind == 'truncate':
    path.write_bytes(original.read_bytes()[:original.stat().st_size // 2])
  elif kind == 'garbage':
    path.write_bytes(np.random.default_rng(0).bytes(min(original.stat().st_size, 1 << 20)))
  elif kind == 'empty':
    path.write_bytes(b'')
  elif kind == 'corrupt':
    content = bytearray(original.read_bytes())
    middle = len(content) // 2
    content[middle:middle + 64] = bytes(255 - b for b in content[middle:middle + 64])
    path.write_bytes(bytes(content))
  elif kind != 'delete':
    raise ValueError(kind)
  return path


@contextlib.contextmanager
def tmpfs(mount: pathlib.Path, size: str):
  """A fresh tmpfs of `size` (mount's -o size=, e.g. '64k') at `mount`, for a disk that fills up;
  a skip where this user cannot mount one (it needs root). Unmounted at the end."""
  import pytest  # pylint: disable=g-import-not-at-top
  mount.mkdir(parents=True, exist_ok=True)
  made = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(mount)],
                        capture_output=True, text=True, check=False)
  if made.returncode:
    pytest.skip(f'cannot mount a tmpfs here ({made.stderr.strip()[:100]})')
  try:
    yield mount
  finally:
    subprocess.run(['umount', '-l', str(mount)], check=False)
