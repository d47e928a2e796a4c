"""The weight file: a net's variables and its config in one safetensors file.

  model, variables = load_pretrained('model.safetensors')
  logits = model.apply(variables, images, train=False)

`resnet_jax.export` writes it from a run and `resnet_jax.convert` from torchvision weights.
Tensors are float32 and named by their path in the variables, e.g.
'params/stage1_unit1/conv1/kernel' and 'batch_stats/stage1_unit1/bn1/mean', always in the
unrolled layout (stage{s}_unit{u}), whatever `scan` the writing net used; `load_pretrained`
stacks them again for a scanned net. The metadata (strings, as safetensors requires) holds JSON:
'model' (the keyword arguments of create_model), 'data' (the eval preprocessing: dataset,
eval_split, image_size, mean, std, crop_fraction), 'class_names' and 'source'. It is read and
written with safetensors' NumPy API, which needs no torch.
"""

import contextlib
import dataclasses
import json
import os

import flax.traverse_util
import jax
import numpy as np

from resnet_jax.errors import RunError
from resnet_jax.models.factory import from_config
from resnet_jax.models.resnet import abstract_variables, scan_to_unrolled, unrolled_to_scan

FORMAT = 'resnet_jax'
FORMAT_VERSION = '1'
COLLECTIONS = ('params', 'batch_stats')


class PretrainedError(ValueError):
  """A weight file that does not exist or is not one of this project's; the message says which."""


@dataclasses.dataclass
class Pretrained:
  """What a weight file holds. `variables` are NumPy arrays in the unrolled layout."""
  model_config: dict
  data_config: dict
  class_names: list[str] | None
  source: str
  variables: dict


def flatten(variables) -> dict:
  """{'params': {'head': {'kernel': x}}} -> {'params/head/kernel': x}, sorted by name."""
  return dict(sorted(flax.traverse_util.flatten_dict(variables, sep='/').items()))


def unflatten(flat: dict) -> dict:
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def unrolled(variables, model) -> dict:
  """The variables of `model` in the unrolled layout, as NumPy."""
  variables = {c: variables[c] for c in COLLECTIONS if c in variables}
  if model.scan:
    variables = scan_to_unrolled(variables, model)
  return jax.tree.map(np.asarray, variables)


def in_layout(variables, model) -> dict:
  """Unrolled variables -> the layout of `model` (stacked stage{s}_scan if it scans)."""
  if model.scan:
    variables = jax.tree.map(np.asarray, unrolled_to_scan(variables, model))
  return variables


def save_pretrained(path: str, variables: dict, model, model_config: dict, data_config: dict,
                    class_names=None, source: str = '') -> None:
  """Writes `variables` of `model` (either layout) with its config; atomically (a crash leaves the
  old file or the new one). `model_config`: create_model's keyword arguments."""
  # Imported here: only the weight file needs safetensors.
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  tensors = {name: np.ascontiguousarray(np.asarray(leaf, np.float32))
             for name, leaf in flatten(unrolled(variables, model)).items()}
  # The layout in the file is always unrolled, so the net that loads it chooses scan freely.
  model_config = {**model_config, 'scan': None}
  metadata = {'format': FORMAT, 'format_version': FORMAT_VERSION,
              'model': json.dumps(model_config), 'data': json.dumps(data_config),
              'class_names': json.dumps(list(class_names) if class_names else None),
              'source': source}
  tmp = f'{path}.tmp-{os.getpid()}'  # Its own: two exports to one file leave one whole file.
  try:
    save_file(tensors, tmp, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its files readable by the owner only.
    os.replace(tmp, path)
  except (OSError, SafetensorError) as e:  # A full disk, a quota: safetensors says which.
    with contextlib.suppress(OSError):
      os.remove(tmp)
    kept = 'the file there is as it was' if os.path.exists(path) else 'nothing was written'
    raise RunError(f'could not write {path} ({" ".join(str(e).split())}); {kept}.') from None


def is_weight_file(path: str) -> bool:
  """Whether `path` is a weight file of this project (its header says so); reads the header only."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(path, 'numpy') as f:
      return (f.metadata() or {}).get('format') == FORMAT
  except Exception:  # pylint: disable=broad-except  # Anything else is not ours.
    return False


def read_pretrained(path: str) -> Pretrained:
  """Reads a weight file without building the net; PretrainedError if it is not one."""
  if not os.path.isfile(path):
    raise PretrainedError(f'{path} ' + ('is a directory, not a weight file'
                                        if os.path.isdir(path) else 'does not exist'))
  from safetensors import safe_open  # Imported here: only the weight file needs it.
  try:
    with safe_open(path, framework='numpy') as f:
      metadata = f.metadata() or {}
      tensors = {name: f.get_tensor(name) for name in f.keys()}
  except Exception as e:  # safetensors raises its own error types for damaged files.
    raise PretrainedError(f'{path} is not a safetensors file ({type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""})') from None
  if metadata.get('format') != FORMAT:
    raise PretrainedError(
        f'{path} is a safetensors file, but not a resnet_jax weight file (its metadata has no '
        "format 'resnet_jax'); write one with python -m resnet_jax.export or resnet_jax.convert")
  if metadata.get('format_version') != FORMAT_VERSION:
    raise PretrainedError(f'{path} has format version {metadata.get("format_version")!r}; this '
                          f'resnet_jax reads version {FORMAT_VERSION}')
  try:
    model_config = json.loads(metadata['model'])
    data_config = json.loads(metadata.get('data', '{}'))
    class_names = json.loads(metadata.get('class_names', 'null'))
  except (KeyError, ValueError) as e:
    raise PretrainedError(f'{path}: its metadata is damaged ({type(e).__name__}: {e})') from None
  _check_metadata(path, model_config, data_config, class_names)
  bad = next((name for name, t in tensors.items() if not np.all(np.isfinite(t))), None)
  if bad is not None:  # An error, not a warning: such weights can only predict NaN.
    raise PretrainedError(f'{path}: the tensor {bad} holds NaN or infinite values; the file '
                          'was written from a diverged run or is damaged')
  return Pretrained(model_config, data_config, class_names, metadata.get('source', ''),
                    unflatten(tensors))


def _check_metadata(path: str, model_config, data_config, class_names) -> None:
  """The metadata's records have the types save_pretrained writes; PretrainedError naming the
  field otherwise (a file from elsewhere is untrusted input)."""
  def fail(field, what):
    raise PretrainedError(f'{path}: its metadata field {field!r} {what}')
  if not isinstance(model_config, dict):
    fail('model', f'is a {type(model_config).__name__}, not an object of model settings')
  for key in ('family', 'depth'):
    if key not in model_config:
      fail('model', f'has no {key!r}')
  if not isinstance(data_config, dict):
    fail('data', f'is a {type(data_config).__name__}, not an object')
  for key in ('mean', 'std'):
    value = data_config.get(key, (0.0,))
    if not (isinstance(value, (list, tuple)) and value
            and all(isinstance(v, (int, float)) for v in value)):
      fail('data', f'has a {key!r} that is not a list of numbers')
  if class_names is not None and not (isinstance(class_names, list)
                                      and all(isinstance(c, str) for c in class_names)):
    fail('class_names', 'is not a list of strings')


def check_fits(variables: dict, model, image_shape=(32, 32, 3)) -> list[str]:
  """The differences between unrolled `variables` and what `model` needs, e.g.
  ['params/head/kernel has shape (64, 5) in the weights, (64, 10) in the net']; [] if none."""
  abstract = abstract_variables(model.clone(scan=False), (1, *image_shape))
  return differences(flatten(variables), flatten(
      {c: abstract[c] for c in COLLECTIONS if c in abstract}))


def differences(given: dict, wanted: dict, net: str = 'the net') -> list[str]:
  """Names missing from `given`, names it has too many, and shapes that differ."""
  problems = [f'{k} is missing from the weights' for k in wanted if k not in given]
  problems += [f'{k} is not in {net}' for k in given if k not in wanted]
  problems += [f'{k} has shape {tuple(given[k].shape)} in the weights, '
               f'{tuple(wanted[k].shape)} in {net}'
               for k in wanted if k in given and tuple(given[k].shape) != tuple(wanted[k].shape)]
  return problems


def describe(problems: list[str], first: int = 3) -> str:
  """'1 difference: a' or '12 differences, e.g. a; b; c'."""
  if len(problems) == 1:
    return f'1 difference: {problems[0]}'
  return f'{len(problems)} differences, e.g. {"; ".join(problems[:first])}'


def load_pretrained(path: str, **overrides):
  """(model, variables) from a weight file; `overrides` replace create_model arguments (e.g.
  dtype='bfloat16', scan=True). The variables are in the model's layout, in its param_dtype."""
  return build(read_pretrained(path), path, **overrides)


def build(pretrained: Pretrained, path: str = 'the weight file', **overrides):
  """load_pretrained for a file read already."""
  try:
    model = from_config(pretrained.model_config, **overrides)
  except (TypeError, ValueError) as e:
    raise PretrainedError(f'{path}: its model config cannot be built ({e})') from None
  channels = len(pretrained.data_config.get('mean', (0, 0, 0)))
  problems = check_fits(pretrained.variables, model, (32, 32, channels))
  if problems:
    raise PretrainedError(f'{path}: the weights do not fit its model config '
                          f'({describe(problems)})')
  variables = in_layout(pretrained.variables, model)
  dtype = model.param_dtype
  variables = {c: jax.tree.map(lambda x: np.asarray(x, dtype) if c == 'params' else x, tree)
               for c, tree in variables.items()}
  return model, variables
