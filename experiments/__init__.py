"""Command-line entry points (`python -m experiments.<name>`); the logic lives in inception_jax."""
