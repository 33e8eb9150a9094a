"""Test set-up: four simulated CPU devices, so data-parallel code paths run here.

XLA reads XLA_FLAGS once, when JAX first starts, so this must run before any test imports jax.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TFDS must never try the network in tests.
os.environ.setdefault("NO_GCE_CHECK", "true")
