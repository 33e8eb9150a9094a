"""Flax heads of the relational methods: linear embeddings (CC, CRD) and CRD's memory.

The arithmetic lives in `vid_jax.losses.relational`; these modules add the parameters and, for
CRD, the memory banks, kept in the non-trainable collection `memory` (the trainer passes it
mutable at every step).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vid_jax.losses import relational as rel_losses

Array = jax.Array
MEMORY = "memory"  # the collection of CRD's memory banks and normaliser


class LinearEmbedding(nn.Module):
    """x -> W vec(x) + b, l2-normalised: CRD's `Embed` (and an optional embedding for CC).

    Attributes:
        features: output dimension.
        normalize: whether to l2-normalise the output (CRD's critic needs unit vectors).
    """

    features: int = 128
    normalize: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = nn.Dense(self.features, name="linear")(rel_losses.flatten_batch(x))
        return rel_losses.l2_normalize(y) if self.normalize else y


class CRDHead(nn.Module):
    r"""Contrastive representation distillation (Tian et al., ICLR 2020) with memory banks.

    Student and teacher features are embedded by trained linear maps g_S, g_T (to
    `embed_dim`, l2-normalised). Two memory banks of M = `num_examples` rows keep an embedding
    per training example: the teacher bank m^T (of g_T(t)) and the student bank m^S (of g_S(s)).
    For each example b, its positive is its own row, its K negatives are rows drawn uniformly
    from the other M - 1 examples (`rel_losses.crd_sample_negatives`, with the `distill` RNG),
    and the loss is the NCE loss `rel_losses.crd_nce_loss` of

        g_S(s_b) against m^T[b, negatives]   (the paper's objective, which trains the student)
      + g_T(t_b) against m^S[b, negatives]   (the authors' code adds this symmetric term; it is
                                              what trains g_T, `symmetric=True`).

    The NCE normaliser Z of each term is estimated from the first training batch, as in the
    code, and then kept (in `memory`). After the loss is computed, the rows of the batch are
    updated with momentum and re-normalised (`rel_losses.momentum_update_rows`), from
    stop-gradient embeddings. The banks start as in the code, U(-a, a) with a = 1/sqrt(D/3)
    (rows of expected squared norm 1), not normalised; every updated row is unit-norm.

    Data parallelism: with `axis_name`, each device computes the loss of its own examples (the
    trainer averages over devices), with negatives drawn for the whole batch from one key and
    sliced, and Z estimated over the whole batch; the banks are updated with the gathered
    indices and embeddings of the whole batch, so every device keeps the same copy.

    Attributes:
        embed_dim: dimension of the embeddings and memory rows (128 in the paper).
        num_negatives: K, negatives per example; min(K, M - 1) are drawn.
        temperature: tau of the critic (the code's 0.07).
        momentum: weight of the old memory row in the update (0.5).
        symmetric: add the teacher-anchored term (see above).
    """

    embed_dim: int = 128
    num_negatives: int = 4096
    temperature: float = 0.07
    momentum: float = 0.5
    symmetric: bool = True

    @nn.compact
    def __call__(self, student: Array, teacher: Array, indices: Array, num_examples: int,
                 axis_name: str | None = None, update: bool = False) -> Array:
        """NCE loss of this device's examples; updates the memory when `update`.

        Args:
            student: [b, ...] student features of this device's examples.
            teacher: [b, ...] teacher features.
            indices: [b] positions of the examples in the training split (memory rows).
            num_examples: M, rows of the memory (read when the memory is created).
            axis_name: the data-parallel axis, or None.
            update: whether to update the memory and fix Z (a training step, not init).

        Returns:
            Scalar loss.
        """
        def bank_init() -> Array:
            bound = 1.0 / math.sqrt(self.embed_dim / 3.0)
            return jax.random.uniform(self.make_rng("params"), (num_examples, self.embed_dim),
                                      jnp.float32, -bound, bound)

        student_bank = self.variable(MEMORY, "student_bank", bank_init)
        teacher_bank = self.variable(MEMORY, "teacher_bank", bank_init)
        # log Z of the student- and teacher-anchored terms, and whether they are set yet.
        log_z = self.variable(MEMORY, "log_normalizer", lambda: jnp.zeros((2,), jnp.float32))
        z_ready = self.variable(MEMORY, "normalizer_ready", lambda: jnp.zeros((), bool))

        size = student_bank.value.shape[0]  # M, as created
        if size < 2:
            raise ValueError(
                f"CRD's memory has {size} rows: it needs one per training example, from "
                "ctx.num_examples (the training-split size) when the term is initialised.")
        v_s = LinearEmbedding(self.embed_dim, name="embed_student")(student)
        v_t = LinearEmbedding(self.embed_dim, name="embed_teacher")(teacher)
        num_negatives = min(self.num_negatives, size - 1)
        indices = indices.astype(jnp.int32)
        batch_indices = _gather(indices, axis_name)
        negatives = rel_losses.crd_sample_negatives(self.make_rng("distill"), batch_indices,
                                                    num_negatives, size)
        if axis_name is not None:  # this device's rows of the whole batch's draw
            local = indices.shape[0]
            negatives = jax.lax.dynamic_slice_in_dim(
                negatives, jax.lax.axis_index(axis_name) * local, local)
        contrast = jnp.concatenate([indices[:, None], negatives], axis=1)  # [b, 1 + K]

        def logits(anchor: Array, bank: Array) -> Array:
            rows = jax.lax.stop_gradient(bank)[contrast]  # [b, 1 + K, D]
            return jnp.einsum("bkd,bd->bk", rows, anchor) / self.temperature

        terms = [(logits(v_s, teacher_bank.value), 0)]
        if self.symmetric:
            terms.append((logits(v_t, student_bank.value), 1))
        estimates = log_z.value
        loss = jnp.zeros((), jnp.float32)
        for term_logits, slot in terms:
            estimate = _global_log_normalizer(jax.lax.stop_gradient(term_logits), size,
                                              axis_name)
            estimates = estimates.at[slot].set(estimate)
            used = jnp.where(z_ready.value, log_z.value[slot], estimate)
            loss = loss + rel_losses.crd_nce_loss(term_logits, used, size)

        if update:
            batch_s = _gather(jax.lax.stop_gradient(v_s), axis_name)
            batch_t = _gather(jax.lax.stop_gradient(v_t), axis_name)
            student_bank.value = rel_losses.momentum_update_rows(
                student_bank.value, batch_indices, batch_s, self.momentum)
            teacher_bank.value = rel_losses.momentum_update_rows(
                teacher_bank.value, batch_indices, batch_t, self.momentum)
            log_z.value = jnp.where(z_ready.value, log_z.value, estimates)
            z_ready.value = jnp.ones((), bool)
        return loss


def _gather(x: Array, axis_name: str | None) -> Array:
    """The whole batch's rows of x, typed as the same on every device.

    `jax.lax.all_gather`'s result counts as varying over the axis for shard_map's replication
    check, so a memory updated from it could not be returned as replicated state. The sum of
    zero-padded shards is the same gather, exact (each entry adds zeros), and invariant.
    """
    if axis_name is None:
        return x
    shard = x.shape[0]
    padded = jnp.zeros((jax.lax.axis_size(axis_name) * shard, *x.shape[1:]), x.dtype)
    padded = jax.lax.dynamic_update_slice_in_dim(
        padded, x, jax.lax.axis_index(axis_name) * shard, axis=0)
    return jax.lax.psum(padded, axis_name)


def _global_log_normalizer(logits: Array, num_examples: int, axis_name: str | None) -> Array:
    """`rel_losses.crd_log_normalizer` over the whole batch (equal shards on every device)."""
    if axis_name is None:
        return rel_losses.crd_log_normalizer(logits, num_examples)
    top = jax.lax.pmax(jnp.max(logits), axis_name)
    mean_exp = jax.lax.pmean(jnp.mean(jnp.exp(logits - top)), axis_name)
    return top + jnp.log(mean_exp) + math.log(num_examples)
