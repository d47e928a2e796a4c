"""The residual networks of He et al. 2015 and 2016; `create_model` is the entry point.

  model = create_model('cifar', 110, placement='full_preact')
  variables = model.init(rng, images, train=False)            # {'params', 'batch_stats'}
  logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])

  model, variables = load_pretrained('model.safetensors')    # resnet_jax.export / convert
"""

from resnet_jax.models.factory import SCAN_AUTO_MIN_REPEATS, create_model, from_config
from resnet_jax.models.weight_file import (PretrainedError, is_weight_file, load_pretrained,
                                           read_pretrained, save_pretrained)
from resnet_jax.models.resnet import (CIFAR, FAMILIES, IMAGENET, SHORTCUTS, ResNet,
                                      abstract_variables, scan_to_unrolled, unit_names,
                                      unrolled_to_scan)
from resnet_jax.models.placements import PLACEMENTS
from resnet_jax.models.units import ResidualUnit

__all__ = [
    'CIFAR', 'FAMILIES', 'abstract_variables', 'IMAGENET', 'PLACEMENTS', 'SCAN_AUTO_MIN_REPEATS', 'SHORTCUTS',
    'PretrainedError', 'ResNet', 'ResidualUnit', 'create_model', 'from_config', 'is_weight_file',
    'load_pretrained',
    'read_pretrained', 'save_pretrained', 'scan_to_unrolled', 'unit_names', 'unrolled_to_scan',
]
