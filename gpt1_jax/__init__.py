"""gpt1_jax: GPT-1 (Radford et al. 2018) in JAX/Flax."""

__version__ = "0.1.0"
