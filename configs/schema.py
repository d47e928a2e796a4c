"""The schema of a run config: every key, its type and its default.

resnet_jax.config_check holds every config to these keys and types (a key missing, unknown or of
another type is a one-line error), and a workdir recorded before a key was added counts that key
at its default here (resnet_jax/train/workdir.py). The config files import this and override
what they change. The defaults are He et al. 2015's CIFAR-10 recipe (Sec. 4.2: batch 128, lr 0.1
divided by 10 at 32k and 48k of 64k steps, weight decay 1e-4, momentum 0.9), so the CIFAR
configs override little; configs/cifar10_resnet20.py is that recipe's ResNet-20, with its command
and the paper's result. A None is a placeholder: a key that is derived at train time from the
final config (resnet_jax.recipes) or that stays unset.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  config.seed = 0

  # Model: the keyword arguments of resnet_jax.models.create_model.
  config.model = ml_collections.ConfigDict()
  config.model.family = 'cifar'
  config.model.depth = 20
  config.model.placement = 'original'
  # None picks the family's default: A for CIFAR basic nets (2015), B for bottleneck and ImageNet nets.
  config.model.shortcut = ml_collections.config_dict.placeholder(str)
  # None: the dataset's number of classes (resnet_jax/data/datasets.py), filled in at train time.
  config.model.num_classes = ml_collections.config_dict.placeholder(int)
  config.model.width = 1.0
  config.model.dtype = 'float32'
  config.model.param_dtype = 'float32'
  # None picks per backend (resnet_jax.models.factory.scan_by_default): on accelerators the nets
  # whose stages repeat a unit 9+ times, on CPU (where unrolled nets train faster) 50+ times.
  config.model.scan = ml_collections.config_dict.placeholder(bool)
  config.model.scan_unroll = 1  # Units per iteration of a scanned stage's loop (nn.scan unroll).
  # None: on CPU only. The gradient convs of scanned units in the layout XLA:CPU's fast path
  # takes inside a loop (resnet_jax.models.layers.canonical_grad_conv); same function.
  config.model.canonical_conv_grads = ml_collections.config_dict.placeholder(bool)
  # None: on CPU for float32 nets. Each unrolled unit's output goes through a conditional XLA
  # cannot fuse across, so the backward pass reads it instead of recomputing the stage up to it
  # (resnet_jax.models.layers.fusion_fence); same function, bit for bit.
  config.model.unit_fence = ml_collections.config_dict.placeholder(bool)
  config.model.remat = False
  config.model.zero_init_last = False
  config.model.stochastic_depth = 0.0
  config.model.resnet_d = False
  config.model.stride_in_3x3 = True  # ImageNet only: True is v1.5 (torchvision), False is v1 (the paper).
  # Flax's BN momentum is the decay of the running averages (PyTorch's 0.1 is 1 - 0.9).
  config.model.bn_momentum = 0.9
  config.model.bn_epsilon = 1e-5
  # The classifier's initial weights: 'lecun_normal' (flax's default), 'uniform' (torch.nn.Linear's,
  # kept by fb.resnet.torch) or 'zeros'; the papers do not say (resnet_jax/models/layers.py).
  config.model.head_init = 'lecun_normal'

  # Data: a dataset of resnet_jax/data/datasets.py (tfds ArrayRecord through tfds.data_source +
  # grain, or scikit-learn's digits offline), or any other tfds dataset.
  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'cifar10'
  # None falls back to $TFDS_DATA_DIR, then to tfds's default (~/tensorflow_datasets).
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  # None: the size of the dataset's images, where they have one (resnet_jax/data/datasets.py).
  config.data.image_size = ml_collections.config_dict.placeholder(int)
  # 'cifar': pad, random crop, flip. 'shift': pad and crop only. 'inception': random-resized
  # crop, flip. 'none'.
  config.data.augment = 'cifar'
  config.data.pad = 4
  # Per-channel normalisation, in [0, 255] pixel units. None: the training-set statistics that
  # the dataset's record holds (resnet_jax/data/datasets.py), filled in at train time.
  config.data.mean = ml_collections.config_dict.placeholder(tuple)
  config.data.std = ml_collections.config_dict.placeholder(tuple)
  # 'grain': decode, augment and batch on the host (resnet_jax/data/pipeline.py), any dataset.
  # 'device': the train split decoded once into uint8 on every device, each step's batch gathered,
  # cropped, flipped and normalised inside the jitted step (resnet_jax/data/device.py); only for
  # splits that fit in memory (CIFAR-10/100, digits), and it needs no data-iterator state.
  config.data.pipeline = 'grain'
  # Multiprocess loading through grain: 0 loads in the main process.
  config.data.worker_count = 0
  config.data.worker_buffer_size = 2
  # grain's ArrayRecord readers per loading process. grain's defaults (16 threads, 500 records)
  # suit remote disks; on local files the threads fight the augmentations for the GIL and grain
  # scans the whole read-ahead for every record: 4 and 128 read CIFAR-10 about 1.8x faster on 2
  # cores. More loading processes (worker_count) are the way to scale up.
  config.data.read_threads = 4
  config.data.read_buffer_size = 128
  # Batches staged on the devices ahead of the step that consumes them.
  config.data.prefetch_to_device = 2
  # ImageNet eval: resize the shorter side to image_size / crop_fraction, then centre crop.
  config.data.crop_fraction = 0.875

  # Optimisation. batch_size is global: it is split over all devices of all processes.
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_train_steps = 64_000
  # If > 0, num_epochs wins over num_train_steps.
  config.num_epochs = 0.0
  config.optimizer = 'momentum'  # 'momentum' or 'nesterov'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 1e-4
  # 'l2' adds wd * |w|^2 / 2 to the loss gradient (the papers); 'decoupled' is AdamW-style.
  config.weight_decay_type = 'l2'
  # BN scales/biases and biases are not decayed (see resnet_jax.train.optim).
  config.decay_bn_and_bias = False
  config.lr_schedule = 'piecewise'  # 'piecewise', 'cosine' or 'constant'
  # piecewise: multiply the lr by lr_decay_factor at each of these steps.
  config.lr_boundaries = (32_000, 48_000)
  config.lr_decay_factor = 0.1
  # If True, learning_rate is multiplied by batch_size / 256 (Goyal et al. 2017).
  config.scale_lr_by_batch = False
  # The warm-up keys left at None are derived from the final config at train time, after every
  # override, by resnet_jax.recipes.finalize; a value set in a config or on the command line wins.
  # recipe: '2015' (He et al. 2015, Sec. 4.2: ResNet-110 and deeper hold warmup_lr for 400
  # steps), '2016' (Identity Mappings: every depth does), 'auto' ('2016' for the pre-activation
  # placements, else '2015') or 'none'.
  config.recipe = 'auto'
  # None: warmup_epochs in steps if that is > 0, else the recipe's 400 or 0.
  config.warmup_steps = ml_collections.config_dict.placeholder(int)
  config.warmup_epochs = 0.0
  # 'linear' ramps from 0 to learning_rate; 'constant' holds warmup_lr. None: 'constant' where
  # the recipe warms up, else 'linear'.
  config.warmup_mode = ml_collections.config_dict.placeholder(str)
  config.warmup_lr = 0.01
  # How the warm-up ends. 'steps': after warmup_steps. 'train_error': He et al. 2015 (Sec. 4.2)
  # warm ResNet-110 up "until the training error is below 80%": warmup_lr holds until the
  # running training error (an average over about warmup_error_window steps) is below
  # warmup_error, and after warmup_steps at the latest; it needs warmup_mode 'constant'.
  config.warmup_rule = 'steps'
  config.warmup_error = 0.8
  config.warmup_error_window = 20
  config.label_smoothing = 0.0

  # Bookkeeping, in steps.
  config.log_every_steps = 100
  config.eval_every_steps = 2_000
  # If > 0, eval_every_epochs wins over eval_every_steps, as num_epochs does over num_train_steps.
  config.eval_every_epochs = 0.0
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3
  config.keep_best_checkpoint = True
  # A rerun in a workdir must have the config of the run there, except for the keys that do not
  # change the result (resnet_jax/train/workdir.py); True continues it with a changed config.
  config.allow_config_change = False
  # A non-finite loss or gradient stops the run before it is saved; True skips such steps
  # (parameters, optimiser state and BN statistics unchanged) and counts them in the metrics.
  config.skip_nonfinite_updates = False
  # Fine-tuning: a fresh run starts from these weights instead of a random init: a weight file
  # (resnet_jax.export, resnet_jax.convert) or a workdir with an optional checkpoint ('runs/x' is
  # its newest, 'runs/x:1200', 'runs/x:best'). The optimiser state and the step start fresh; a run
  # that resumes continues from its own checkpoint (resnet_jax/train/init_from.py). None: random.
  config.init_from = ml_collections.config_dict.placeholder(str)
  # False keeps the new net's random classifier (head) instead of loading it, as a different
  # config.model.num_classes requires.
  config.init_head = True

  # Parallelism over all devices of all processes.
  config.parallel = ml_collections.ConfigDict()
  config.parallel.backend = 'shard_map'  # 'shard_map' (jit + global arrays) or 'pmap'
  # Sync BN batch statistics across devices (cross-replica BN); False keeps them per device.
  config.parallel.sync_batch_stats = True

  # XLA switches that only XLA_FLAGS reaches, set by resnet_jax.xla_flags before JAX starts (in
  # `python -m resnet_jax.main`, a sweep's run processes and benchmarks.throughput); XLA_FLAGS
  # that you set win over a None. None of them changes a result.
  config.xla = ml_collections.ConfigDict()
  # XLA:CPU's concurrency-optimised kernel scheduler (XLA's default: on). None: off where the
  # model computes in bfloat16 (ResNet-20 ~5% faster on 2 cores), XLA's default otherwise (off
  # made float32 6-13% slower); docs/benchmarks.md has the measurements. Ignored off the CPU.
  config.xla.cpu_concurrency_optimized_scheduler = ml_collections.config_dict.placeholder(bool)

  # Multi-host. 'auto' initialises jax.distributed when the environment says so (TPU pods,
  # SLURM, or coordinator_address set); 'off' never does.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialize = 'auto'
  config.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)
  config.distributed.num_processes = ml_collections.config_dict.placeholder(int)
  config.distributed.process_id = ml_collections.config_dict.placeholder(int)

  return config
