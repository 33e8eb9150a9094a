"""vid_jax.host: one XLA CPU device per core by default, unless the user chose otherwise."""
import os
import subprocess
import sys

import pytest

from vid_jax import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("from vid_jax import host; count = host.use_all_cpu_cores({arg}); import jax; "
         "print(count, jax.device_count(), jax.default_backend())")


def _probe(xla_flags=None, arg=""):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, "-c", PROBE.format(arg=arg)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


def test_one_cpu_device_per_core_by_default():
    cores = len(os.sched_getaffinity(0))
    count, devices, backend = _probe()
    assert backend == "cpu"
    assert int(count) == int(devices) == min(cores, host.MAX_CPU_DEVICES)
    assert _probe(arg="max_devices=1")[:2] == ["1", "1"]


def test_a_device_count_the_user_set_is_kept():
    assert _probe(xla_flags="--xla_force_host_platform_device_count=3")[:2] == ["3", "3"]


def test_too_late_once_jax_has_started(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    pytest.importorskip("jax")  # this test process has started JAX (conftest set 4 devices)
    assert host.use_all_cpu_cores() is None
    assert "XLA_FLAGS" not in os.environ
