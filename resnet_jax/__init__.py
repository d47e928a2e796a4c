"""resnet_jax: the residual networks of He et al. 2015 and 2016 in JAX/Flax."""

__version__ = '0.1.0'
