"""PyTorch peers: the same workload as the project's step, trained by PyTorch, eager and compiled.

  python -m benchmarks.peers.torch_peers '{"family": "cifar", "depth": 20, ...}'

benchmarks/throughput.py runs this in a process of its own (so neither framework's threads or
device memory get in the other's way) and reads the `RESULT {json}` line it prints last. The nets:
torchvision's resnet18/34/50/101/152 for ImageNet workloads (v1.5, as the project's ImageNet
configs), and for CIFAR the 2015 paper's 6n+2 nets with option A shortcuts, written here. Each
variant is a fresh model: channels_last memory format, bf16 autocast where the workload computes
in bfloat16, SGD with momentum and weight decay, `loss.backward()`; 'compile' wraps the model in
`torch.compile` (default mode). cuDNN autotuning is on, as torchvision's reference training
script has it. Timing is benchmarks.timing.time_steps, the project's own method.

Without torch (or, for ImageNet nets, torchvision) it prints one line saying so and a RESULT
with the reason, and exits 0.
"""

import json
import sys

from benchmarks import timing

VARIANTS = ('eager', 'compile')
TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)


def _one_line(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text[:300]}'


def _cifar_resnet(depth: int, num_classes: int, in_chans: int):
  import torch
  from torch import nn
  from torch.nn import functional as F

  class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.stride, self.extra = stride, planes - in_planes

    def forward(self, x):
      out = F.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      shortcut = x
      if self.stride != 1 or self.extra:
        # Option A (He et al. 2015, Sec. 4.2): subsample, zero-pad the new channels.
        shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
      return F.relu(out + shortcut)

  class CifarResNet(nn.Module):
    def __init__(self):
      super().__init__()
      n = (depth - 2) // 6
      self.conv = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
      self.bn = nn.BatchNorm2d(16)
      blocks, in_planes = [], 16
      for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(n):
          blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
          in_planes = planes
      self.blocks = nn.Sequential(*blocks)
      self.fc = nn.Linear(64, num_classes)
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x):
      x = self.blocks(F.relu(self.bn(self.conv(x))))
      return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

  return CifarResNet()


def create_model(spec: dict):
  """The peer net of the workload; ValueError or ImportError (with the reason) where there is
  none."""
  family, depth = spec['family'], spec['depth']
  in_chans = spec['image_shape'][-1]
  if family == 'cifar':
    if (depth - 2) % 6:
      raise ValueError(f'the PyTorch peer has only the 6n+2 CIFAR nets of basic blocks, not '
                       f'ResNet-{depth}')
    return _cifar_resnet(depth, spec['num_classes'], in_chans), f'cifar ResNet-{depth} (A)'
  if depth not in TORCHVISION_DEPTHS or in_chans != 3:
    raise ValueError(f'torchvision has no ImageNet ResNet-{depth} for {in_chans}-channel images')
  try:
    import torchvision
  except ImportError as e:
    raise ImportError(f'torchvision is not installed ({e}); the ImageNet PyTorch peers need '
                      "it: pip install -e '.[benchmark]'") from None
  model = getattr(torchvision.models, f'resnet{depth}')(num_classes=spec['num_classes'])
  return model, f'torchvision resnet{depth}'


def run_variant(spec: dict, variant: str, device) -> dict:
  import torch
  from torch.nn import functional as F

  torch.manual_seed(0)
  model, name = create_model(spec)
  model = model.to(device, memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=spec['learning_rate'],
                              momentum=spec['momentum'], nesterov=spec['nesterov'],
                              weight_decay=spec['weight_decay'])
  forward = torch.compile(model) if variant == 'compile' else model
  h, w, c = spec['image_shape']
  batch = spec['batch_size']
  images = torch.randn(batch, c, h, w, device=device).to(memory_format=torch.channels_last)
  labels = torch.randint(0, spec['num_classes'], (batch,), device=device)
  bf16 = spec['dtype'] == 'bfloat16'

  def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      loss = F.cross_entropy(forward(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

  cuda = device.type == 'cuda'
  if cuda:
    torch.cuda.reset_peak_memory_stats(device)
  times = timing.time_steps(step, (lambda _: torch.cuda.synchronize(device)) if cuda
                            else (lambda loss: loss.item()),
                            warmup=spec['warmup'], steps=spec['steps'])
  return {
      'impl': f'torch_{variant}', 'peer_model': name, 'step_s': times.median_s,
      # A compiled model compiles in its first step; eager has nothing to compile.
      'compile_s': times.first_s if variant == 'compile' else None,
      'peak_mem_bytes': torch.cuda.max_memory_allocated(device) if cuda else None,
      'device': torch.cuda.get_device_name(device) if cuda else 'cpu',
      'threads': torch.get_num_threads(),
  }


def run(spec: dict) -> dict:
  """{'rows': [one per variant that ran], 'skipped': [one line per peer that did not]}."""
  try:
    import torch
  except ImportError as e:
    return {'rows': [], 'skipped': [
        f'torch is not installed in {sys.executable} ({e}): the PyTorch peers are skipped; '
        "install them into a separate venv with pip install -e '.[benchmark]'"]}
  torch.backends.cudnn.benchmark = True
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  rows, skipped = [], []
  if spec['dtype'] not in ('float32', 'bfloat16'):
    return {'rows': [], 'skipped': [f'PyTorch peers: dtype {spec["dtype"]} is not benchmarked '
                                    '(float32 and bfloat16 are)']}
  for variant in spec.get('variants', VARIANTS):
    try:
      rows.append(run_variant(spec, variant, device))
    except (ValueError, ImportError) as e:  # No such peer: the same reason for every variant.
      skipped.append(f'PyTorch peers skipped: {e}')
      break
    except Exception as e:  # pylint: disable=broad-except  # e.g. torch.compile without a compiler
      skipped.append(f'torch_{variant} failed: {_one_line(e)}')
  return {'rows': rows, 'skipped': skipped}


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(f'usage: python -m benchmarks.peers.torch_peers SPEC_JSON\n{__doc__}', file=sys.stderr)
    return 2
  result = run(json.loads(argv[1]))
  print('RESULT ' + json.dumps(result), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
