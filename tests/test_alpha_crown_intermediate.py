"""alpha-CROWN with optimised intermediate slopes ("alpha-crown-full", option ``optimize_intermediate``)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import get_relaxation, input_box, margin_lower_bounds, margin_spec
from jaxcert.bounds.alpha_crown import fixed_intermediate
from jaxcert.bounds.alpha_intermediate import initial_slopes, intermediate_with_slopes, joint_row_bounds, pass_neurons
from jaxcert.bounds.backsub import two_sided_rows
from jaxcert.bounds.crown import make_line_fn
from jaxcert.bounds.exact import exact_bounds
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets import Dense, Flatten, ReLU, forward, init_params
from tests.soundness import NET_NAMES
from tests.test_crown import assert_contains, box_samples, example_box, net_arch, split_rows, with_identity_rows

#: three hidden ReLU layers: two intermediate passes whose slopes matter
DEEP = (Flatten(), Dense(12), ReLU(), Dense(12), ReLU(), Dense(12), ReLU(), Dense(3))


def deep_box(seed: int, eps: float = 0.3, batch: int = 4):
    params = init_params(DEEP, (5,), seed=seed)
    x = jnp.asarray(np.random.default_rng(seed).random((batch, 5), dtype=np.float32))
    lo, hi = input_box(x, eps)
    return params, lo, hi, margin_spec(jnp.arange(batch) % 3, 3)


@functools.cache
def full_family(net: str, steps: int = 8):
    """Jitted ``(params, lo, hi, C) -> {name: (lb, ub, logit_lb, logit_ub)}`` for the alpha-CROWN variants."""
    arch, _ = net_arch(net)

    def fn(params, lo, hi, C):
        spec = with_identity_rows(C)
        return {
            name: split_rows(*get_relaxation(name)(arch, params, lo, hi, spec, **opts), C)
            for name, opts in (("alpha-crown-full", {"steps": steps}), ("crown", {}))
        }

    return jax.jit(fn)


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@pytest.mark.parametrize(("seed", "eps"), [(1, 0.05), (2, 0.2)])
def test_full_alpha_crown_is_sound_and_never_looser_than_crown(net, seed, eps):
    _, params, lo, hi, C = example_box(net, seed, eps)
    bounds = full_family(net)(params, lo, hi, C)
    assert_contains(net, params, lo, hi, C, bounds, seed)
    full, crown = bounds["alpha-crown-full"], bounds["crown"]
    for k in (0, 2):  # lower bounds of margins and logits
        assert np.all(full[k] >= crown[k] - 1e-5)
        assert np.all(full[k + 1] <= crown[k + 1] + 1e-5)


@pytest.mark.slow
def test_full_alpha_crown_lies_between_crown_and_the_exact_bounds():
    params, lo, hi, C = deep_box(3, batch=2)
    fn = jax.jit(
        lambda p: (
            get_relaxation("alpha-crown-full")(DEEP, p, lo, hi, C, steps=10),
            get_relaxation("crown")(DEEP, p, lo, hi, C),
        )
    )
    (lb, ub), (crown_lb, crown_ub) = fn(params)
    exact_lb, exact_ub = exact_bounds(DEEP, params, lo, hi, C)
    assert np.all(lb <= exact_lb + 1e-4) and np.all(ub >= exact_ub - 1e-4)
    assert np.all(lb >= crown_lb - 1e-5) and np.all(ub <= crown_ub + 1e-5)
    assert np.sum(lb - crown_lb) + np.sum(crown_ub - ub) > 1e-2


@pytest.mark.slow
def test_optimising_the_intermediate_slopes_is_tighter_than_the_final_ones_alone():
    """On a 3-hidden-layer net the joint optimisation beats final-only alpha-CROWN on average."""
    fn = jax.jit(
        lambda p, lo, hi, C: tuple(
            margin_lower_bounds_box(name, p, lo, hi, C) for name in ("alpha-crown", "alpha-crown-full")
        )
    )
    gains = []
    for seed in range(3):
        alpha, full = fn(*deep_box(seed))
        gains.append(float(jnp.mean(full - alpha)))
    assert np.mean(gains) > 1e-2, gains


def margin_lower_bounds_box(name, params, lo, hi, C):
    return get_relaxation(name)(DEEP, params, lo, hi, C, steps=20, bound_upper=False)[0]


@functools.partial(jax.jit, static_argnums=0)
def pieces(arch, params, lo, hi, C, key):
    """Initial CROWN bounds, bounds recomputed at the start and at random slopes, and the start's rows."""
    body, body_params, W, b = fold_spec(arch, params, C, lo.shape[0])
    bounds, lines, _ = fixed_intermediate(body, body_params, lo, hi, "crown")
    A, a = two_sided_rows(W, b)
    start = initial_slopes(body, bounds, lines, A.shape[1])
    neurons = pass_neurons(body, bounds, None)
    leaves, tree = jax.tree_util.tree_flatten(start["inter"])
    keys = jax.random.split(key, len(leaves))
    rand = jax.tree_util.tree_unflatten(
        tree, [jax.random.uniform(k, s.shape) for k, s in zip(keys, leaves, strict=True)]
    )
    again = intermediate_with_slopes(body, body_params, lo, hi, bounds, start["inter"], neurons)
    moved = intermediate_with_slopes(body, body_params, lo, hi, bounds, rand, neurons)
    rows = joint_row_bounds(body, body_params, start, bounds, neurons, make_line_fn(body), A, a, lo, hi)
    return bounds, again, moved, rows


@pytest.mark.slow
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_recomputed_intermediate_bounds_are_sound_never_looser_and_the_start_reproduces_crown(net):
    arch, params, lo, hi, C = example_box(net, 4, 0.15)
    bounds, again, moved, rows = pieces(arch, params, lo, hi, C, jax.random.key(0))
    crown_lb, crown_ub = get_relaxation("crown")(arch, params, lo, hi, C)
    np.testing.assert_allclose(rows, jnp.concatenate([crown_lb, -crown_ub], axis=1), rtol=1e-5, atol=1e-5)
    # pre-activations of sampled inputs, layer by layer
    pts = box_samples(0, lo, hi, 128).reshape(-1, *lo.shape[1:])
    h, pre = pts, {}
    for i, (spec, p) in enumerate(zip(arch, params, strict=True)):
        if not spec.is_affine:
            pre[i] = np.asarray(h).reshape(lo.shape[0], -1, *h.shape[1:])
        h = forward((spec,), [p], h)
    for i, (l0, u0) in bounds.items():
        np.testing.assert_allclose(again[i][0], l0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(again[i][1], u0, rtol=1e-5, atol=1e-5)
        lm, um = moved[i]
        assert np.all(lm >= l0) and np.all(um <= u0)
        assert np.all(pre[i] >= np.asarray(lm)[:, None] - 1e-5) and np.all(pre[i] <= np.asarray(um)[:, None] + 1e-5)


@pytest.mark.slow
def test_vmap_over_parameter_samples_equals_a_loop():
    arch, params, lo, hi, C = example_box("mlp", 5, 0.15)
    fn = get_relaxation("alpha-crown-full")
    samples = [jax.tree_util.tree_map(lambda v, k=k: v * (1.0 + 0.1 * k), params) for k in range(3)]
    stacked = jax.tree_util.tree_map(lambda *v: jnp.stack(v), *samples)
    one = lambda p: fn(arch, p, lo, hi, C, steps=5)
    lb, ub = jax.jit(jax.vmap(one))(stacked)
    for k, p in enumerate(samples):
        lb_k, ub_k = jax.jit(one)(p)
        np.testing.assert_allclose(lb[k], lb_k, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ub[k], ub_k, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_full_alpha_crown_is_differentiable_in_the_parameters():
    arch, params, lo, hi, C = example_box("mlp", 6, 0.1)
    fn = get_relaxation("alpha-crown-full")
    grads = jax.jit(jax.grad(lambda p: jnp.sum(fn(arch, p, lo, hi, C, steps=3)[0])))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves) and any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


@pytest.mark.slow
def test_full_alpha_crown_takes_the_options_of_the_intermediate_passes():
    """Windows (patches) give the same bounds as dense rows; a row budget and row chunks stay sound."""
    arch, params, lo, hi, C = example_box("conv", 6, 0.1)
    fn = get_relaxation("alpha-crown-full")
    run = jax.jit(
        lambda p: [
            fn(arch, p, lo, hi, C, steps=3, **opts)
            for opts in ({"patches": False}, {"patches": True}, {"unstable_budget": 2, "max_rows_bytes": 4096})
        ]
    )
    (dense_lb, dense_ub), (win_lb, win_ub), budget = run(params)
    np.testing.assert_allclose(win_lb, dense_lb, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(win_ub, dense_ub, rtol=1e-4, atol=1e-4)
    pts = box_samples(6, lo, hi, 64).reshape(-1, *lo.shape[1:])
    margins = np.einsum("bsn,bkn->bsk", np.asarray(forward(arch, params, pts)).reshape(lo.shape[0], -1, 3), C)
    for lb, ub in ((dense_lb, dense_ub), budget):
        assert np.all(margins >= np.asarray(lb)[:, None] - 1e-4) and np.all(margins <= np.asarray(ub)[:, None] + 1e-4)


@pytest.mark.slow
def test_one_sided_margins_are_sound_and_exact_at_eps_zero():
    arch, params, lo, hi, _ = example_box("bn", 7, 0.1)
    x, y = (lo + hi) / 2, jnp.array([0, 1, 2])
    for eps in (0.0, 0.05):
        lb = margin_lower_bounds(arch, params, x, y, eps, relaxation="alpha-crown-full", steps=3)
        pts = box_samples(7, *input_box(x, eps), 64)
        logits = np.asarray(forward(arch, params, pts.reshape(-1, *x.shape[1:]))).reshape(3, -1, 3)
        margins = logits[np.arange(3), :, np.asarray(y)][:, :, None] - logits  # (B, S, 3)
        other = margins[:, :, [[1, 2], [0, 2], [0, 1]]][np.arange(3), :, np.arange(3)]  # (B, S, 2)
        assert np.all(other >= np.asarray(lb)[:, None] - 1e-4)
        if eps == 0.0:
            np.testing.assert_allclose(lb, other[:, 0], atol=1e-4)


def test_bad_option_combinations_give_clear_errors():
    arch, params, lo, hi, C = example_box("mlp", 0, 0.1)
    fn = get_relaxation("alpha-crown")

    def trace(**options):
        return jax.eval_shape(lambda p: fn(arch, p, lo, hi, C, **options), params)

    with pytest.raises(ValueError, match="optimize_intermediate=True needs intermediate='crown'"):
        trace(optimize_intermediate=True, intermediate="ibp")
    with pytest.raises(ValueError, match="optimize_intermediate must be True or False"):
        trace(optimize_intermediate="yes")
