"""inception_jax: the Inception family of image classifiers in JAX/Flax."""
