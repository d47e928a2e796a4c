"""One tiny trained quickstart run, shared by the tests that use a trained model.

The first test that asks trains it (20 steps of the digits quickstart, checkpoints at 10 and 20,
each evaluated), in a subprocess as a user would; the others, in this process or in another
pytest-xdist worker, wait for it and reuse it. Tests only read it, except for the eval_*.json that
resnet_jax.evaluate writes.
"""

import fcntl
import os
import pathlib
import shutil
import subprocess

from tests import helpers

STEPS = 20
OVERRIDES = (f'--config.num_train_steps={STEPS}', '--config.checkpoint_every_steps=10',
             '--config.eval_every_steps=10', '--config.log_every_steps=10',
             '--config.warmup_steps=5', '--config.lr_boundaries=(15, 18)')


def _shared_root(tmp_path_factory) -> pathlib.Path:
  base = tmp_path_factory.getbasetemp()
  # Under xdist each worker has its own basetemp inside the session's: share the session's.
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


def quickstart_run(tmp_path_factory) -> tuple[pathlib.Path, str]:
  """(workdir, the stderr of the run that trained it)."""
  root = _shared_root(tmp_path_factory)
  workdir, log = root / 'trained_quickstart', root / 'trained_quickstart.stderr'
  with open(root / 'trained_quickstart.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / 'summary.json').exists():
      shutil.rmtree(workdir, ignore_errors=True)  # What a failed attempt left.
      env = helpers.env()
      # Without JAX_PLATFORMS, as users run it: JAX probes for a TPU (tests/test_use_misc.py).
      env.pop('JAX_PLATFORMS')
      result = subprocess.run(helpers.main_command(workdir, *OVERRIDES), cwd=helpers.ROOT,
                              env=env, capture_output=True, text=True, timeout=1800)
      assert result.returncode == 0, result.stderr[-3000:]
      log.write_text(result.stderr)
  return workdir, log.read_text()


def snapshot(workdir) -> dict:
  """Bytes and modification time of every file of a run but the eval_*.json of evaluate."""
  root = pathlib.Path(workdir)
  return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
          for p in sorted(root.rglob('*'))
          if p.is_file() and not p.name.startswith('eval_')}
