"""Analysis of certified losses as functions of the weights: tightness, continuity, sensitivity, landscape
smoothness along the gradient step, unstable neurons, and 1-D/2-D slices (raw and Gaussian-smoothed).

Most analyses take a ``loss_fn(params) -> scalar`` (e.g. :func:`certified_loss_fn`) and evaluate it at
many weight points in one vmapped call; ``loss_fn`` is a static argument of ``jax.jit``, so reuse the
same object to reuse the compiled code.
"""

from jaxcert.analysis.continuity import Jump, largest_jump, neighbour_steps, sweep
from jaxcert.analysis.directions import (
    add_scaled,
    filter_normalize,
    gaussian_direction,
    gaussian_samples,
    random_direction,
    tree_cosine,
    tree_norm,
    zero_frozen,
)
from jaxcert.analysis.landscape import StepLandscape, gradient_step_landscape
from jaxcert.analysis.objective import LossFn, certified_loss, certified_loss_fn
from jaxcert.analysis.sensitivity import gradient_norm, perturbation_sensitivity
from jaxcert.analysis.slices import (
    loss_along_line,
    loss_on_plane,
    smoothed_loss,
    smoothed_loss_along_line,
    smoothed_loss_on_plane,
)
from jaxcert.analysis.tightness import (
    EXACT_REFERENCES,
    Tightness,
    certified_loss_ratio,
    clean_margins,
    margin_bounds,
    margin_slack,
    mean_bound_width,
    slack_ratio,
    tightness,
)
from jaxcert.analysis.toy import SweepExample, bias_sweep_example
from jaxcert.analysis.unstable import (
    NeuronStatus,
    has_preactivation_bounds,
    neuron_status,
    preactivation_bounds,
    unstable_counts,
)

__all__ = [
    "EXACT_REFERENCES",
    "Jump",
    "LossFn",
    "NeuronStatus",
    "StepLandscape",
    "SweepExample",
    "Tightness",
    "add_scaled",
    "bias_sweep_example",
    "certified_loss",
    "certified_loss_fn",
    "certified_loss_ratio",
    "clean_margins",
    "filter_normalize",
    "gaussian_direction",
    "gaussian_samples",
    "gradient_norm",
    "gradient_step_landscape",
    "has_preactivation_bounds",
    "largest_jump",
    "loss_along_line",
    "loss_on_plane",
    "margin_bounds",
    "margin_slack",
    "mean_bound_width",
    "neighbour_steps",
    "neuron_status",
    "perturbation_sensitivity",
    "preactivation_bounds",
    "random_direction",
    "slack_ratio",
    "smoothed_loss",
    "smoothed_loss_along_line",
    "smoothed_loss_on_plane",
    "sweep",
    "tightness",
    "tree_cosine",
    "tree_norm",
    "unstable_counts",
    "zero_frozen",
]
