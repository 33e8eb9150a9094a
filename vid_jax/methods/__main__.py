"""`python -m vid_jax.methods`: the registered distillation methods, one line each
(`--markdown`: the README's table, with the config line that selects each)."""
import sys

from vid_jax.methods import describe, markdown

print(markdown() if "--markdown" in sys.argv[1:] else describe())
