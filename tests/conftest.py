"""Test-wide settings.

Eight simulated CPU devices let sharding tests run on any machine. Real forward/backward passes compile
with most XLA optimizations off, as flax's example tests do: compile time, not run time, dominates tests
on tiny inputs, and the results are the same programs' results.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402  (after XLA_FLAGS)

jax.config.update('jax_disable_most_optimizations', True)
