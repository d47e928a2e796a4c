"""The published numbers the studies compare with, each table labelled with its source.

Transcribed from the papers' own tables; tests/test_experiments.py checks the transcription
against the project's reference notes where they are at hand.
"""

import json

_PAPER_NUMBERS = {
    'identity_mappings_table2': {
        'source': 'He et al. 2016 (Identity Mappings, arXiv 1603.05027), Table 2: CIFAR-10 '
                  'test error (%), median of 5 runs',
        'ResNet-110': {'original': 6.61, 'bn_after_add': 8.17, 'relu_before_add': 7.84,
                       'relu_only_preact': 6.71, 'full_preact': 6.37},
        'ResNet-164': {'original': 5.93, 'bn_after_add': 6.50, 'relu_before_add': 6.14,
                       'relu_only_preact': 5.91, 'full_preact': 5.46},
    },
    'identity_mappings_table3_cifar100': {
        'source': 'He et al. 2016 (Identity Mappings), Table 3: CIFAR-100 test error (%), '
                  'median of 5 runs',
        'ResNet-164': {'original': 25.16, 'full_preact': 24.33},
        'ResNet-1001': {'original': 27.82, 'full_preact': 22.71},
    },
    'resnet2015_table6': {
        'source': 'He et al. 2015 (arXiv 1512.03385), Table 6: CIFAR-10 test error (%), '
                  'option A shortcuts (ResNet-110: best of 5 runs, mean 6.61 +- 0.16)',
        'residual': {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93},
    },
    'resnet2015_fig6': {
        'source': 'He et al. 2015, Fig. 6 (curves only, no table): plain nets train and test '
                  'worse as they get deeper (plain-20 < plain-32 < plain-44 < plain-56); '
                  'plain-110 stays above 60% error; residual nets do better as they get deeper',
    },
}


def paper_numbers() -> dict:
  """The published numbers the studies compare with, each table labelled with its source."""
  return json.loads(json.dumps(_PAPER_NUMBERS), object_hook=lambda d: {
      (int(k) if k.isdigit() else k): v for k, v in d.items()})
