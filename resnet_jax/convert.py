"""Converts torchvision's ResNet weights into this project's weight file.

  python -m resnet_jax.convert --from=torchvision --arch=resnet50 resnet50-0676ba61.pth out.safetensors
  python -m resnet_jax.convert --from=torchvision --arch=resnet18 resnet18.safetensors out.safetensors

IN is a torchvision state_dict: a .pth file (read with torch, which must then be installed) or a
.safetensors file (read without torch). Nothing is downloaded; the README names the files
torchvision publishes. OUT is read by resnet_jax.models.load_pretrained, resnet_jax.evaluate
--model, resnet_jax.predict --model and --config.init_from. The port is exact
(resnet_jax/models/torchvision.py; tests/test_convert.py compares logits with torchvision's).
"""

import os

from absl import app, flags

from resnet_jax import cli, errors

FLAGS = flags.FLAGS
ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')


def define_flags() -> None:
  flags.DEFINE_enum('from', 'torchvision', ('torchvision',), 'Where the weights come from.')
  flags.DEFINE_enum('arch', None, ARCHS, "The torchvision net the weights are for; required.")
  flags.DEFINE_float('crop_fraction', 224 / 256, 'The eval crop the file records: 224/256 for '
                     "torchvision's IMAGENET1K_V1 weights (resize 256, crop 224), 224/232 for "
                     'IMAGENET1K_V2 (resize 232).')
  flags.DEFINE_bool('overwrite', False, 'Replace OUT even if it is not a weight file (one is '
                    'replaced anyway; a file inside a run never is).')
  cli.register_key_flags(('from', 'arch', 'crop_fraction', 'overwrite'))


def read_state_dict(path: str) -> dict:
  """A torchvision state_dict as NumPy arrays, from a .pth (torch) or .safetensors file."""
  if not os.path.isfile(path):
    raise errors.UserError(f'{path} ' + ('is a directory, not a weight file'
                                         if os.path.isdir(path) else 'does not exist') + '.')
  if path.endswith('.safetensors'):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    try:
      with safe_open(path, framework='numpy') as f:
        if (f.metadata() or {}).get('format') == 'resnet_jax':
          raise errors.UserError(f'{path} is a resnet_jax weight file already; load it as it is '
                                 '(models.load_pretrained, --model, --config.init_from).')
        return {name: f.get_tensor(name) for name in f.keys()}
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # safetensors' own error types.
      raise errors.UserError(f'{path} cannot be read as a safetensors file ({type(e).__name__}: '
                             f'{str(e).splitlines()[0] if str(e) else ""}).') from None
  if not path.endswith(('.pth', '.pt')):
    raise errors.UserError(f'{path}: give a .pth (read with torch) or a .safetensors file.')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(
        f'{path} is a .pth file, which only PyTorch reads, and torch is not installed; install '
        'it (pip install torch) or give the weights as a .safetensors file.') from None
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch's errors for damaged files.
    raise errors.UserError(f'{path} cannot be read by torch.load ({type(e).__name__}: '
                           f'{str(e).splitlines()[0] if str(e) else ""}).') from None
  if isinstance(loaded, dict) and isinstance(loaded.get('state_dict'), dict):
    loaded = loaded['state_dict']  # A training checkpoint that wraps the state_dict.
  if not isinstance(loaded, dict):
    raise errors.UserError(f'{path} holds a {type(loaded).__name__}, not a state_dict.')
  return {k: v.detach().cpu().numpy() for k, v in loaded.items() if hasattr(v, 'detach')}


def data_config(crop_fraction: float = 224 / 256) -> dict:
  """torchvision's ImageNet preprocessing (ImageClassification): resize the shorter side to 256,
  centre crop 224 (its IMAGENET1K_V2 weights: 232, crop_fraction 224/232), and normalise with
  the statistics of the imagenet2012 record (resnet_jax/data/datasets.py), which are its own."""
  from resnet_jax.data import datasets  # pylint: disable=g-import-not-at-top
  record = datasets.TABLE['imagenet2012']
  return dict(dataset=record.name, eval_split='validation', image_size=224, mean=record.mean,
              std=record.std, crop_fraction=crop_fraction)


def _imagenet_class_names(num_classes: int):
  """torchvision's ImageNet class names, where torchvision is installed; else None."""
  if num_classes != 1000:
    return None
  try:
    from torchvision.models import _meta  # pylint: disable=g-import-not-at-top
    return list(_meta._IMAGENET_CATEGORIES)  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except  # Without torchvision: class indices.
    return None


def convert(source: str, arch: str, in_path: str, out: str,
            crop_fraction: float = 224 / 256, overwrite: bool = False) -> str:
  """Writes OUT from IN; returns a line that says what it holds."""
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax import models  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import torchvision as tv  # pylint: disable=g-import-not-at-top
  if source != 'torchvision':
    raise errors.UserError(f'--from={source}: only torchvision weights are converted.')
  if not 0 < crop_fraction <= 1:
    raise errors.UserError(f'--crop_fraction={crop_fraction} must be in (0, 1].')
  if os.path.abspath(out) == os.path.abspath(in_path):
    raise errors.UserError(f'OUT {out} is IN: give another file name for the converted weights.')
  cli.check_output_file('OUT', out, models.is_weight_file, overwrite)
  state_dict = read_state_dict(in_path)
  try:
    model_config, variables = tv.from_torchvision(state_dict, arch)
  except ValueError as e:
    raise errors.UserError(f'{in_path}: {e}; is --arch={arch} right?') from None
  model = models.from_config(model_config, scan=False)
  models.save_pretrained(out, variables, model, model_config, data_config(crop_fraction),
                         _imagenet_class_names(model_config['num_classes']),
                         source=f'torchvision {arch} from {os.path.basename(in_path)}')
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  return (f'wrote {out}: torchvision {arch} as imagenet ResNet-{model_config["depth"]} (v1.5), '
          f'{model_config["num_classes"]} classes, {count:,} parameters')


@cli.one_line_errors
def main(argv):
  cli.quiet_library_logs()
  if len(argv) != 3:
    raise errors.UserError(
        f'give IN and OUT after the flags ({len(argv) - 1} arguments given), e.g. python -m '
        'resnet_jax.convert --from=torchvision --arch=resnet50 resnet50.pth resnet50.safetensors')
  print(convert(FLAGS['from'].value, FLAGS.arch, argv[1], argv[2], FLAGS.crop_fraction,
                FLAGS.overwrite))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, required=('arch',),
                                                          positional='IN OUT'))
