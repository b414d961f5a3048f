"""Which neuron to split next: a BaBSR-style score (Bunel et al. 2020) from CROWN's output pass.

CROWN's lower bound of a margin row contains, for every crossing neuron ``l < 0 < u`` of ReLU layer
``i`` whose coefficient ``A`` (on the ReLU output) is negative, the upper line's intercept
``t = -λ l`` (``λ = u / (u - l)``): the bound is lowered by ``|A⁻| t``. Splitting the neuron makes its
relaxation exact in both children and removes that term, so the score estimates the gain as

    score = |∂lb/∂t| · t + 10⁻⁶ · min(u, -l)        (crossing neurons; -inf for every other one)

where ``∂lb/∂t = A⁻`` is read off the output back-substitution by autodiff (summed over the rows still
open, ``lb ≤ 0``), and the small second term orders the neurons with no negative coefficient (e.g. all
positive: the lower line's loss) by the size of their relaxation gap. Neurons already split are stable
under their clamped bounds, so they are never chosen again.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxcert.bab.layout import LayerSlot
from jaxcert.bounds.relu_slopes import crossing_mask

#: Weight of the tie-breaking gap term of the score.
GAP_WEIGHT = 1e-6


def neuron_scores(
    bounds: Mapping[int, tuple[jax.Array, jax.Array]],
    intercepts: Mapping[int, jax.Array],
    intercept_grads: Mapping[int, jax.Array],
    layout: tuple[LayerSlot, ...],
) -> jax.Array:
    """Scores (D, N) of every neuron in the split layout (see the module doc): ``bounds[i] = (l, u)``,
    ``intercepts[i] = t`` and ``intercept_grads[i] = ∂lb/∂t`` of ReLU layer ``i``, each (D, *shape_i)."""
    parts = []
    for slot in layout:
        lo, hi = bounds[slot.index]
        gain = jnp.abs(intercept_grads[slot.index]) * intercepts[slot.index] + GAP_WEIGHT * jnp.minimum(hi, -lo)
        score = jnp.where(crossing_mask(lo, hi), gain, -jnp.inf)
        parts.append(score.reshape(score.shape[0], -1))
    return jnp.concatenate(parts, axis=1)


def choose_neuron(scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(choice, has_choice)`` per domain: the flat index of the best-scoring neuron, and whether any
    neuron can be split (some crossing neuron is left)."""
    return jnp.argmax(scores, axis=1), jnp.isfinite(jnp.max(scores, axis=1))
