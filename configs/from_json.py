"""A complete config saved as JSON, e.g. by a study's --print_commands.

  python -m resnet_jax.main --config=configs/from_json.py:PATH --workdir=DIR

The JSON's values go onto the schema's defaults, so that every key keeps its type and a
command-line override (--config.distributed.process_id=1) parses as it does for any config.
"""

import json

from configs import schema


def get_config(path: str):
  config = schema.get_config()
  with open(path) as f:
    config.update(json.load(f))
  return config
