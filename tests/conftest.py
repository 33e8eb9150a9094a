"""Test set-up: four simulated CPU devices, so data-parallel code paths run here; one XLA
compilation cache for the whole run; the slowest modules scheduled first.

XLA reads XLA_FLAGS once, when JAX first starts, so this must run before any test imports jax.
"""
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TFDS must never try the network in tests.
os.environ.setdefault("NO_GCE_CHECK", "true")

# The tests train the same tiny networks in many processes (subprocesses killed and resumed,
# notebook kernels, pytest-xdist's workers): JAX's persistent cache compiles each step once per
# run instead of once per process. Fresh for every run (set here, before workers and
# subprocesses start, which inherit it), so nothing outlives the run; a run that sets
# JAX_COMPILATION_CACHE_DIR itself keeps its own.
_CACHE_CREATED_HERE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_CREATED_HERE = tempfile.mkdtemp(prefix="vid_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_CREATED_HERE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Modules that take a minute or more: first, so that pytest-xdist's workers (`make test`,
# --dist loadfile) do not end with one of them running alone.
SLOWEST_MODULES = ("test_train.py", "test_method_zoo.py", "test_notebooks.py",
                   "test_workdir.py", "test_factor_methods.py", "test_distributed.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return SLOWEST_MODULES.index(name) if name in SLOWEST_MODULES else len(SLOWEST_MODULES)

    items.sort(key=rank)  # stable: each module keeps its order


def pytest_unconfigure(config):
    if _CACHE_CREATED_HERE is not None:
        shutil.rmtree(_CACHE_CREATED_HERE, ignore_errors=True)
