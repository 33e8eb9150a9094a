"""`python -m vid_jax.methods`: the table of registered distillation methods."""
from vid_jax.methods import describe

print(describe())
