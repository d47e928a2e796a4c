"""Peer implementations that benchmarks/throughput.py times side by side with the project's step.

flax_minimal: a plain jax.jit train step on a minimal Flax ResNet, in the style of the Flax
ImageNet example. torch_peers: torchvision and CIFAR ResNets in PyTorch, eager and compiled; it
imports no JAX and runs in a process of its own.
"""
