"""The cost levers of the CROWN family and the orderings that keep them honest.

* windows ("patches mode") for the rows of convolutional layers equal the dense back-substitution;
* a budget of unstable neurons per layer is sound, equals full CROWN once it covers every unstable
  neuron, and is really used (a small budget is looser);
* lower bounds only (``bound_upper=False``) give the same lower bounds as the two-sided pass;
* tightness: full CROWN beats CROWN-IBP where CROWN proves a neuron stable that IBP cannot, the
  min-area slope has the smaller relaxation area, and with one ReLU layer CROWN's bound equals the
  triangle LP where every crossing neuron takes its upper line.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import get_relaxation, input_box, margin_lower_bounds, margin_spec
from jaxcert.bounds.crown import crown_with_intermediate
from jaxcert.bounds.exact import exact_bounds, lp_bounds
from jaxcert.bounds.ibp import interval_layers
from jaxcert.bounds.relu_slopes import crossing_mask, relu_lines
from jaxcert.nets import BatchNorm, Conv, Dense, Flatten, Normalize, ReLU, forward, init_params
from tests.soundness import sample_box, tiny_params

#: Three convolutional ReLU layers (strides, padding, BatchNorm), then a dense ReLU layer.
CONV_NET = (
    (
        Normalize((0.4,), (0.3,)),
        Conv(3, 3, 2, 1),
        ReLU(),
        Conv(4, 3, 1, 1),
        BatchNorm(),
        ReLU(),
        Conv(3, 2, 2, 0),
        ReLU(),
        Flatten(),
        Dense(6),
        ReLU(),
        Dense(4),
    ),
    (8, 8, 1),
)


def conv_case(seed: int = 0, eps: float = 0.05, batch: int = 3):
    arch, in_shape = CONV_NET
    params = init_params(arch, in_shape, seed=seed)
    rng = np.random.default_rng(seed)
    for spec, p in zip(arch, params, strict=True):
        if isinstance(spec, BatchNorm):
            p["scale"] = jnp.asarray(rng.normal(size=p["scale"].shape), jnp.float32)
            p["var"] = jnp.asarray(rng.uniform(0.3, 2.0, size=p["var"].shape), jnp.float32)
    x = jnp.asarray(rng.random((batch, *in_shape)), jnp.float32)
    lo, hi = input_box(x, eps)
    C = margin_spec(jnp.arange(batch) % 4, 4)
    return arch, params, lo, hi, C


@functools.cache
def crown_variants():
    """Jitted CROWN with every combination of the options, on CONV_NET."""
    arch, _ = CONV_NET

    def fn(params, lo, hi, C):
        out = {}
        for patches, budget in ((False, None), (False, 1000), (True, None), (True, 1000), (True, 2)):
            key = f"patches={patches}, budget={budget}"
            out[key] = crown_with_intermediate(arch, params, lo, hi, C, patches=patches, unstable_budget=budget)
        out["lower only"] = crown_with_intermediate(arch, params, lo, hi, C, patches=True, bound_upper=False)
        return out

    return jax.jit(fn)


@pytest.mark.slow
def test_windows_equal_the_dense_back_substitution():
    _, params, lo, hi, C = conv_case()
    out = crown_variants()(params, lo, hi, C)
    dense, windows = out["patches=False, budget=None"], out["patches=True, budget=None"]
    np.testing.assert_allclose(windows[0], dense[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(windows[1], dense[1], rtol=1e-5, atol=1e-5)
    for (wl, wu), (dl, du) in zip(windows[2], dense[2], strict=True):
        np.testing.assert_allclose(wl, dl, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(wu, du, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_budget_covering_every_unstable_neuron_equals_full_crown(seed):
    _, params, lo, hi, C = conv_case(seed)
    out = crown_variants()(params, lo, hi, C)
    for patches in (False, True):  # dense rows gathered from the shared ones, and windows
        full, covered = out[f"patches={patches}, budget=None"], out[f"patches={patches}, budget=1000"]
        # every layer of CONV_NET has fewer than 1000 neurons: the budget covers every unstable one
        np.testing.assert_allclose(covered[0], full[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(covered[1], full[1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_a_small_budget_is_sound_and_looser():
    arch, params, lo, hi, C = conv_case(2, eps=0.08)
    out = crown_variants()(params, lo, hi, C)
    small, full = out["patches=True, budget=2"], out["patches=True, budget=None"]
    # the budget leaves unstable neurons with their interval bounds: the layer after the first refined one
    # has more than 2 unstable neurons per example, so the budget is binding
    assert int(jnp.min(jnp.sum(crossing_mask(*full[2][1]).reshape(3, -1), axis=1))) > 2
    assert float(jnp.sum(full[0] - small[0])) > 1e-3  # looser somewhere
    # first refined layer: the picked neurons get the full bounds, the others keep wider interval bounds
    (sl, su), (fl, fu) = small[2][1], full[2][1]
    assert bool(jnp.all(sl <= fl + 1e-6)) and bool(jnp.all(su >= fu - 1e-6))
    # sound: sampled points and vertices stay inside, and the exact range (MILP) too
    fn = jax.jit(jax.vmap(lambda x: forward(arch, params, x)))
    for b in range(lo.shape[0]):
        pts = sample_box(jax.random.key(b), lo[b], hi[b], 256)
        margins = fn(pts[:, None])[:, 0] @ C[b].T
        assert bool(jnp.all(margins >= small[0][b] - 1e-4)) and bool(jnp.all(margins <= small[1][b] + 1e-4))


@pytest.mark.slow
def test_rows_in_chunks_equal_rows_at_once():
    """A tiny ``max_rows_bytes`` splits every intermediate pass into chunks (``lax.map``): same bounds."""
    arch, params, lo, hi, C = conv_case(6)
    chunked = jax.jit(
        lambda p: [crown_with_intermediate(arch, p, lo, hi, C, patches=w, max_rows_bytes=4096) for w in (False, True)]
    )(params)
    out = crown_variants()(params, lo, hi, C)
    for (lb, ub, _), key in zip(chunked, ("patches=False, budget=None", "patches=True, budget=None"), strict=True):
        np.testing.assert_allclose(lb, out[key][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ub, out[key][1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_budgeted_crown_contains_full_crown_contains_the_exact_range():
    """On the tiny conv net of the soundness tests (MILP-sized): budget 1 ⊇ full ⊇ exact at the refined layer
    and at the output."""
    arch, _, params = tiny_params("conv", 1)
    rng = np.random.default_rng(1)
    lo, hi = input_box(jnp.asarray(rng.random((2, 4, 4, 2)), jnp.float32), 0.05)
    C = margin_spec(jnp.array([0, 2]), 3)
    small, full = jax.jit(
        lambda p: [crown_with_intermediate(arch, p, lo, hi, C, unstable_budget=k) for k in (1, None)]
    )(params)
    (sl, su), (fl, fu) = small[2][1], full[2][1]
    assert bool(jnp.all(sl <= fl + 1e-6)) and bool(jnp.all(su >= fu - 1e-6))
    assert bool(jnp.any(sl < fl - 1e-4))  # the budget binds
    exact_lb, exact_ub = exact_bounds(arch, params, lo, hi, C)
    for lb, ub, _ in (small, full):
        assert np.all(np.asarray(lb) <= exact_lb + 1e-4) and np.all(np.asarray(ub) >= exact_ub - 1e-4)


@pytest.mark.slow
def test_lower_bounds_only_keep_the_lower_bounds_and_give_a_sound_upper_bound():
    arch, params, lo, hi, C = conv_case(3)
    out = crown_variants()(params, lo, hi, C)
    two_sided, one_sided = out["patches=True, budget=None"], out["lower only"]
    np.testing.assert_allclose(one_sided[0], two_sided[0], rtol=1e-6, atol=1e-6)
    fn = jax.jit(jax.vmap(lambda x: forward(arch, params, x)))
    for b in range(lo.shape[0]):  # the upper bound is the interval one of the output: sound
        margins = fn(sample_box(jax.random.key(b), lo[b], hi[b], 256)[:, None])[:, 0] @ C[b].T
        assert bool(jnp.all(margins <= one_sided[1][b] + 1e-4))


@pytest.mark.slow
@pytest.mark.parametrize("relaxation", ["crown", "crown-ibp", "alpha-crown"])
def test_margin_lower_bounds_skip_the_upper_rows_with_the_same_result(relaxation):
    arch, params, lo, hi, _ = conv_case(4)
    x, eps, y = (lo + hi) / 2, 0.05, jnp.arange(3) % 4
    options = {"steps": 3} if relaxation == "alpha-crown" else {}
    margins = lambda p, **more: margin_lower_bounds(arch, p, x, y, eps, relaxation=relaxation, **options, **more)
    lb, both = jax.jit(lambda p: (margins(p), margins(p, bound_upper=True)))(params)
    np.testing.assert_allclose(lb, both, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_budgeted_windows_vmap_over_parameter_samples_like_a_loop_and_differentiate():
    arch, params, lo, hi, C = conv_case(5)
    fn = get_relaxation("crown")
    bound = jax.jit(lambda p: fn(arch, p, lo, hi, C, unstable_budget=3, bound_upper=False)[0])
    samples = [jax.tree_util.tree_map(lambda a, s=s: a * (1 + 0.05 * s), params) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *samples)
    batched = jax.jit(jax.vmap(bound))(stacked)
    for s, p in enumerate(samples):
        np.testing.assert_allclose(batched[s], bound(p), rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(bound(p))))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves) and any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


# ------------------------------------------------------------------------------------------- tightness


def stable_by_crown_net():
    """x ∈ [-1, 1]: h = ReLU(x + 1.5, -x + 1.5) (both stable, in [0.5, 2.5]), v = h₁ + h₂ - 3.5 = -0.5
    exactly, outputs (ReLU(v), -ReLU(v)) = (0, 0). IBP sees v ∈ [-2.5, 1.5] (unstable); CROWN proves
    v = -0.5 < 0."""
    arch = (Dense(2), ReLU(), Dense(1), ReLU(), Dense(2))
    params = [
        {"kernel": jnp.array([[1.0, -1.0]]), "bias": jnp.array([1.5, 1.5])},
        {},
        {"kernel": jnp.array([[1.0], [1.0]]), "bias": jnp.array([-3.5])},
        {},
        {"kernel": jnp.array([[1.0, -1.0]]), "bias": jnp.zeros(2)},
    ]
    return arch, params


@pytest.mark.slow
def test_full_crown_is_strictly_tighter_than_crown_ibp_where_it_proves_a_neuron_stable():
    arch, params = stable_by_crown_net()
    lo, hi = -jnp.ones((1, 1)), jnp.ones((1, 1))
    lb, ub, pre = crown_with_intermediate(arch, params, lo, hi)
    ibp_lb, ibp_ub = get_relaxation("crown-ibp")(arch, params, lo, hi)
    # v = -0.5 for every x: CROWN gets it exactly, so the output relu(v) = 0 is exact too
    np.testing.assert_allclose(pre[1][0], -0.5, atol=1e-6)
    np.testing.assert_allclose(pre[1][1], -0.5, atol=1e-6)
    np.testing.assert_allclose(lb[0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(ub[0, 0], 0.0, atol=1e-6)
    # CROWN-IBP relaxes v ∈ [-2.5, 1.5] by its chord: relu(v) ≤ 0.375 v + 0.9375 = 0.75 at v = -0.5
    assert float(ibp_ub[0, 0]) > 0.5 and float(ibp_lb[0, 1]) < -0.5
    for name in ("crown", "alpha-crown"):
        lb_n, ub_n = get_relaxation(name)(arch, params, lo, hi)
        assert float(ub_n[0, 0]) < float(ibp_ub[0, 0]) - 0.5, name
        assert float(lb_n[0, 1]) > float(ibp_lb[0, 1]) + 0.5, name


def relaxation_area(lower: float, upper: float, alpha: jax.Array) -> jax.Array:
    """Area between the upper chord and the lower line ``α x`` over [l, u]."""
    lines = relu_lines(jnp.array([lower]), jnp.array([upper]), "adaptive")
    s, t = lines.upper_slope[0], lines.upper_intercept[0]
    integral = lambda f: f(upper) - f(lower)
    return integral(lambda x: s * x**2 / 2 + t * x) - alpha * integral(lambda x: x**2 / 2)


@pytest.mark.parametrize(("lower", "upper"), [(-1.0, 3.0), (-3.0, 1.0), (-1.0, 1.2), (-1.2, 1.0), (-0.1, 5.0)])
def test_min_area_slope_has_the_smaller_relaxation_area(lower, upper):
    alpha = relu_lines(jnp.array([lower]), jnp.array([upper]), "adaptive").lower_slope[0]
    assert float(alpha) in (0.0, 1.0)
    assert float(relaxation_area(lower, upper, alpha)) < float(relaxation_area(lower, upper, 1.0 - alpha))


@pytest.mark.slow
def test_one_layer_crown_equals_the_triangle_lp_where_every_crossing_neuron_takes_its_upper_line():
    """Upper bound of Σ w_j ReLU(z_j) with w > 0 (and lower bound with w < 0): every crossing neuron
    takes its chord, which is the LP's optimum too, so CROWN = LP (the interval bounds are exact)."""
    arch = (Flatten(), Dense(8), ReLU(), Dense(2))
    params = init_params(arch, (5,), seed=3)
    w = jnp.abs(params[3]["kernel"]) + 0.1
    params[3] = {"kernel": jnp.concatenate([w[:, :1], -w[:, 1:]], axis=1), "bias": jnp.zeros(2)}
    x = jnp.asarray(np.random.default_rng(0).random((2, 5)), jnp.float32)
    lo, hi = x - 0.3, x + 0.3
    lb, ub, pre = crown_with_intermediate(arch, params, lo, hi)
    assert int(jnp.sum(crossing_mask(*pre[0]))) >= 4  # crossing neurons present: the LP is not trivial
    lp_lb, lp_ub = lp_bounds(arch, params, lo, hi, None, intermediate=pre)
    np.testing.assert_allclose(ub[:, 0], lp_ub[:, 0], rtol=1e-4, atol=1e-4)  # w > 0: upper lines
    np.testing.assert_allclose(lb[:, 1], lp_lb[:, 1], rtol=1e-4, atol=1e-4)  # w < 0: upper lines again


def test_bad_options_give_clear_errors():
    arch, params, lo, hi, C = conv_case()
    crown = get_relaxation("crown")
    with pytest.raises(ValueError, match="unstable_budget"):
        crown(arch, params, lo, hi, C, unstable_budget=0)
    with pytest.raises(ValueError, match="patches"):
        crown(arch, params, lo, hi, C, patches="sometimes")
    with pytest.raises(ValueError, match="max_rows_bytes"):
        crown(arch, params, lo, hi, C, max_rows_bytes=0)
    with pytest.raises(ValueError, match="bound_upper"):
        crown(arch, params, lo, hi, C, bound_upper="no")


def test_a_binding_budget_refines_exactly_the_widest_unstable_neurons():
    """Hand-computed budgeted bounds: of the second ReLU layer (the first one refined by a CROWN pass),
    exactly the ``k`` unstable neurons of widest forward interval get the full CROWN bounds, every other
    neuron keeps its interval bounds. Picking other neurons (e.g. the narrowest) gives other bounds."""
    arch = (Flatten(), Dense(8), ReLU(), Dense(8), ReLU(), Dense(3))
    params = init_params(arch, (4,), seed=11)
    x = jnp.asarray(np.random.default_rng(11).random((2, 4)), jnp.float32)
    lo, hi = input_box(x, 0.3)
    k = 2
    _, _, full = crown_with_intermediate(arch, params, lo, hi, unstable_budget=None)
    _, _, budgeted = crown_with_intermediate(arch, params, lo, hi, unstable_budget=k)
    # the forward interval of the second ReLU's input is IBP's (the first ReLU's bounds are exact ones)
    ilo, ihi = interval_layers(arch, params, lo, hi)[4]
    np.testing.assert_array_equal(budgeted[0][0], full[0][0])  # the first ReLU's bounds are interval ones
    width = np.asarray(ihi - ilo)
    unstable = np.asarray(crossing_mask(ilo, ihi))
    assert unstable.sum(axis=1).min() > k  # the budget binds on every example
    (flo, fhi), (blo, bhi) = full[1], budgeted[1]
    tighter = (np.asarray(flo) > np.asarray(ilo) + 1e-4) | (np.asarray(fhi) < np.asarray(ihi) - 1e-4)
    for b in range(2):
        order = np.argsort(np.where(unstable[b], -width[b], np.inf))
        widest, narrowest = order[:k], order[unstable[b].sum() - k : unstable[b].sum()]
        # the test can tell the selections apart: CROWN tightens a widest neuron that is not a narrowest one
        assert any(tighter[b, j] for j in set(widest) - set(narrowest))
        expected_lo, expected_hi = np.asarray(ilo[b]).copy(), np.asarray(ihi[b]).copy()
        expected_lo[widest], expected_hi[widest] = np.asarray(flo[b])[widest], np.asarray(fhi[b])[widest]
        np.testing.assert_allclose(blo[b], expected_lo, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(bhi[b], expected_hi, rtol=1e-6, atol=1e-6)


#: A geometry whose windows reach the convolution branch of patches.transpose_conv_window: through the
#: second 7×7 convolution the third ReLU's rows have 7×7×12 windows landing on 13×13×12 ones, a matrix of
#: 588 × 2028 > MAX_MATRIX_ENTRIES entries, so they are carried back by the transposed convolution itself.
BIG_WINDOW_NET = (
    (Conv(12, 7, 1, 3), ReLU(), Conv(12, 7, 1, 3), ReLU(), Conv(12, 7, 1, 3), ReLU(), Flatten(), Dense(3)),
    (6, 6, 1),
)


@pytest.mark.slow
def test_large_windows_take_the_convolution_branch_and_equal_the_dense_rows():
    from jaxcert.bounds.patches import MAX_MATRIX_ENTRIES, layer_windows

    arch, in_shape = BIG_WINDOW_NET
    windows = layer_windows(arch[:5], in_shape)  # rows of the third ReLU's input, from the last layer down
    conv2_in = windows[2]  # (input shape of the second Conv, window on it)
    assert conv2_in[1].size == 13 and (7 * 7 * 12) * (13 * 13 * 12) > MAX_MATRIX_ENTRIES
    params = init_params(arch, in_shape, seed=4)
    x = jnp.asarray(np.random.default_rng(4).random((2, *in_shape)), jnp.float32)
    lo, hi = input_box(x, 0.05)
    C = margin_spec(jnp.array([0, 2]), 3)
    run = jax.jit(lambda p, w: crown_with_intermediate(arch, p, lo, hi, C, patches=w), static_argnums=1)
    windowed, dense = run(params, True), run(params, False)
    np.testing.assert_allclose(windowed[0], dense[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(windowed[1], dense[1], rtol=1e-5, atol=1e-5)
    for (wl, wu), (dl, du) in zip(windowed[2], dense[2], strict=True):
        np.testing.assert_allclose(wl, dl, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(wu, du, rtol=1e-5, atol=1e-5)
    assert bool(jnp.any(crossing_mask(*windowed[2][2])))  # the third layer has crossing neurons to bound
    fn = jax.jit(jax.vmap(lambda x: forward(arch, params, x)))
    for b in range(2):
        pts = sample_box(jax.random.key(b), lo[b], hi[b], 256)
        margins = fn(pts[:, None])[:, 0] @ C[b].T
        assert bool(jnp.all(margins >= windowed[0][b] - 1e-4)) and bool(jnp.all(margins <= windowed[1][b] + 1e-4))
