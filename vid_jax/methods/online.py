"""Online distillation: students that teach each other while they all train, no fixed teacher."""
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vid_jax import losses
from vid_jax.methods.base import Context, Features, Method
from vid_jax.models import build_model


def mutual_kl(logits: Sequence[jax.Array]) -> list[jax.Array]:
    """DML's mimicry terms: for each network i, (1/(K-1)) sum_{j != i} KL(p_j || p_i), with the
    others' distributions p_j held fixed (no gradient), averaged over the batch."""
    log_probs = [jax.nn.log_softmax(x.astype(jnp.float32)) for x in logits]
    fixed = [jax.lax.stop_gradient(lp) for lp in log_probs]
    k = len(logits)
    losses = []
    for i, log_p_i in enumerate(log_probs):
        kl = [jnp.sum(jnp.exp(fixed[j]) * (fixed[j] - log_p_i), axis=-1)
              for j in range(k) if j != i]
        losses.append(jnp.mean(sum(kl)) / (k - 1))
    return losses


class DML(nn.Module):
    """Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018).

    K networks train together, each on loss_i = CE(y, p_i) + 1/(K-1) sum_{j!=i} KL(p_j || p_i).
    The student is network 0 (its CE is the trainer's task loss); `peer_models` are the
    others, held in this term's parameters and run on the same augmented images
    (`ctx.images`), so one optimizer trains all of them. The term returns the student's
    mimicry loss plus every peer's whole loss; give it weight 1.

    All networks update at once from the same step's predictions, as Knowledge-Distillation-Zoo
    does; the paper's Algorithm 1 alternates, each network
    updated after the previous one's update. `temperature` (the paper's is 1) divides the
    logits without KD's T^2 factor on the KL.
    """

    peer_models: Sequence[Mapping[str, Any]] = (dict(name="wrn", depth=10, width=1),)
    temperature: float = 1.0
    student_layer_names = ("logits",)
    teacher_layer_names = ()

    @nn.compact
    def __call__(self, student: Features, teacher: Features, ctx: Context) -> jax.Array:
        if not self.peer_models:
            raise ValueError("dml needs at least one peer model in peer_models.")
        peers = [build_model(dict(config), ctx.num_classes, name=f"peer{i}",
                             bn_axis_name=ctx.axis_name if ctx.train else None)
                 for i, config in enumerate(self.peer_models)]
        peer_logits = [peer(ctx.images, train=ctx.train) for peer in peers]
        logits = [student["logits"]] + peer_logits
        mimicry = mutual_kl([x / self.temperature for x in logits])
        return mimicry[0] + sum(
            losses.cross_entropy(x, ctx.labels, ctx.labelled, ctx.axis_name) + kl
            for x, kl in zip(peer_logits, mimicry[1:]))


METHODS = [
    Method("dml", DML, "logits of peers trained online (no fixed teacher)",
           "Zhang et al., Deep Mutual Learning, CVPR 2018",
           example=dict(weight=1.0, peer_models=(dict(name="wrn", depth=10, width=1),))),
]
