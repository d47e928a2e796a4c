"""A run killed at any moment and rerun with the same command ends bit for bit where an
uninterrupted run ends: parameters, BN statistics, optimiser state, RNG and data order, and the
metrics it logs and reports."""

import json
import signal

import pytest

from resnet_jax.metrics import read_metrics
from tests import helpers

STEPS = 160
ARGS = (f'--config.num_train_steps={STEPS}', '--config.checkpoint_every_steps=20',
        '--config.eval_every_steps=80', '--config.log_every_steps=10',
        '--config.lr_boundaries=(100,)', '--config.warmup_steps=10')

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = helpers.run_main(workdir, *ARGS)
  assert result.returncode == 0, result.stderr[-3000:]
  return helpers.final_params(workdir), _logged(workdir)


def _logged(workdir):
  """metrics.jsonl and summary.json, less the summary's wall time."""
  summary = json.loads((workdir / 'summary.json').read_text())
  del summary['wall_s']
  return read_metrics(workdir), summary


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=['SIGKILL', 'SIGTERM', 'SIGINT'])
def test_resumed_run_is_bit_exact(tmp_path, uninterrupted, sig):
  code, stderr = helpers.interrupt(tmp_path, sig, *ARGS)
  interrupted_at = helpers.checkpoint_steps(tmp_path)[-1]
  assert interrupted_at < STEPS, 'the run finished before the signal: nothing was tested'
  if sig != signal.SIGKILL:
    # SIGTERM and Ctrl-C save the step they were on, then exit with 128 + the signal.
    assert code == 128 + sig, stderr[-3000:]
    assert 'Stopped at step' in stderr
    assert not (tmp_path / 'summary.json').exists()  # An unfinished run claims no result.
  else:
    assert code == -signal.SIGKILL
  result = helpers.run_main(tmp_path, *ARGS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from {tmp_path} at step {interrupted_at}' in result.stderr
  (step, state), logged = helpers.final_params(tmp_path), _logged(tmp_path)
  (expected_step, expected_state), expected_logged = uninterrupted
  assert step == STEPS == expected_step
  helpers.assert_trees_equal(state, expected_state)
  # The records of the interrupted attempt after its checkpoint were dropped, not repeated, and
  # the train window that SIGTERM and SIGINT save off a log step was resumed, not restarted.
  assert logged == expected_logged
