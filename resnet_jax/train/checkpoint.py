"""Checkpoints through orbax's CheckpointManager: train state plus the data iterator's position.

Saving both is what makes resume exact: the restored run sees the same next batch, the same
augmentation draws (grain derives them from the record index) and the same RNG stream (the state
holds the key, and steps fold in their number) as the run that was interrupted.
"""

import logging
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


class Checkpointer:
  """Keeps the last `keep` checkpoints, plus the best one by eval accuracy if `keep_best`."""

  def __init__(self, directory: str, keep: int = 3, keep_best: bool = True):
    policies = [checkpoint_managers.LatestN(keep)]
    if keep_best:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: m['eval/accuracy'], n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        # Saves are started by the loop at the steps it chooses, never skipped by orbax.
        save_decision_policy=checkpoint_managers.ContinuousCheckpointingPolicy(),
        create=True)
    self.manager = ocp.CheckpointManager(directory, options=options,
                                         item_names=('state', 'data'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator, eval_metrics: dict | None = None) -> None:
    """Starts an asynchronous save; `state` must be replicated global arrays."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iterator))
    self.manager.save(step, args=args, metrics=eval_metrics, force=True)

  def restore(self, state_like: Any, data_iterator, step: int | None = None):
    """Restores the newest readable checkpoint into the shapes and shardings of `state_like`.

    A checkpoint that cannot be read (a truncated file after a crash, a corrupted disk) is skipped
    with a warning and the next older one is tried; nothing is deleted. Returns (step, state), or
    (None, state_like) when there is nothing to restore.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    for s in steps:
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
      except Exception as e:  # orbax raises many types for unreadable files; try the next one.
        if step is not None:
          raise
        logging.warning('Checkpoint at step %d is unreadable (%s: %s); trying an older one.',
                        s, type(e).__name__, e)
        continue
      return s, restored.state
    return None, state_like

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
