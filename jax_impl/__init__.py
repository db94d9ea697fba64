"""The GPT in JAX (Flax NNX and Optax)."""
