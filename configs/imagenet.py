"""ImageNet (imagenet2012), the large-batch recipe of Goyal et al. 2017 with a cosine schedule.

  python -m resnet_jax.main --workdir=runs/in1k_r50 \
      --config='configs/imagenet.py:depth=50,placement=original'

Takes the model arguments of configs/cifar10.py. 90 epochs of global batch 1024, lr 0.1 x 1024/256
with a 5-epoch linear warm-up then cosine decay, wd 1e-4 (not on BN or biases), bf16 compute,
inception crop + flip, zero-initialised last BN scale, an eval every 5 epochs. The lr scaling,
the warm-up and the eval interval are computed when training starts, so they follow an override
such as `--config.batch_size=256` (`--config.warmup_steps=N` wins over the epochs; evals in steps
need `--config.eval_every_epochs=0 --config.eval_every_steps=N`). Needs imagenet2012
prepared as array_record (`tfds build imagenet2012 --file_format=array_record` with the manual
download in place).
For ResNet-50 the reference points are 76.3% top-1 (Flax example, 100 epochs) and MLPerf's 75.9%.
"""

from configs import cifar10, schema


def get_config(arg: str | None = None):
  config = schema.get_config()
  config.model.family = 'imagenet'
  config.model.depth = 50
  config.model.dtype = 'bfloat16'
  config.model.zero_init_last = True
  cifar10.apply_model_args(config, cifar10.parse_arg(arg))

  config.data.dataset = 'imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.image_size = 224
  config.data.augment = 'inception'
  config.data.worker_count = 16

  config.batch_size = 1024
  config.eval_batch_size = 1000
  config.num_epochs = 90.0
  config.learning_rate = 0.1
  config.scale_lr_by_batch = True
  config.lr_schedule = 'cosine'
  config.lr_boundaries = ()
  # No CIFAR recipe: Goyal et al. 2017 (Sec. 2.2) warm up gradually, linearly over 5 epochs.
  config.recipe = 'none'
  config.warmup_epochs = 5.0
  config.warmup_mode = 'linear'
  # Label smoothing is off in the papers; 0.1 is the common modern choice (Szegedy et al. 2016).
  config.label_smoothing = 0.0
  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 2_500
  return config
