"""Rows for the unstable (example, neuron) pairs only (``unstable_rows=True``, :mod:`jaxcert.bounds.pair_rows`).

* the pairs and the chunks: every crossing neuron listed once, chunks past the count skipped;
* equality: the same intermediate and final bounds as every neuron's rows (``unstable_rows=False``), with
  windows and dense rows, on a residual net, and when the unstable pairs outnumber a chunk many times;
* soundness: sampled points and box vertices inside the final and the intermediate bounds; the exact
  range (MILP) inside the bounds;
* vmap over parameter samples like a loop, the gradient equal to that of the whole-layer pass;
* bad options are one-line errors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import input_box, margin_spec
from jaxcert.bounds.crown import crown_with_intermediate
from jaxcert.bounds.exact import exact_bounds
from jaxcert.bounds.pair_rows import map_needed_chunks, scatter_pairs, unstable_pairs
from jaxcert.bounds.relu_slopes import crossing_mask
from jaxcert.nets import forward
from tests.soundness import sample_box, tiny_params
from tests.test_crown_scaling import conv_case


def test_unstable_pairs_list_every_crossing_neuron_once_in_order_then_padding():
    lower = jnp.array([[-1.0, 0.5, -2.0], [-0.1, -3.0, 1.0]])
    upper = jnp.array([[1.0, 2.0, -1.0], [0.2, 0.0, 2.0]])  # crossing: (0, 0) and (1, 0) only
    pairs, count = unstable_pairs(lower, upper)
    assert int(count) == 2
    assert pairs.tolist() == [0, 3, 6, 6, 6, 6]  # flat b·N + n, then the padding B·N
    out = scatter_pairs(jnp.zeros((2, 3)), pairs, jnp.arange(1.0, 7.0))
    assert out.tolist() == [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]  # the padding is dropped


def test_chunks_past_the_count_are_skipped_and_the_others_computed():
    pairs = jnp.arange(10)
    double = lambda p: (2.0 * p, -2.0 * p)
    for count, chunk in ((0, 3), (1, 3), (4, 3), (9, 3), (10, 4), (10, 10), (7, 16)):
        lo, hi = jax.jit(lambda c, chunk=chunk: map_needed_chunks(double, c, pairs, chunk))(count)
        run = -(-count // chunk) * chunk  # the pairs of every chunk that starts before the count (16: one chunk)
        expected = np.where(np.arange(10) < run, 2.0 * np.arange(10), 0.0)
        np.testing.assert_array_equal(lo, expected)
        np.testing.assert_array_equal(hi, -expected)


@functools.cache
def both_ways(arch, patches, chunk):
    """Jitted ``(every neuron's rows, unstable pairs' rows)`` CROWN with intermediate bounds."""
    crown = functools.partial(crown_with_intermediate, arch, patches=patches)
    return jax.jit(
        lambda p, lo, hi, C: (
            crown(p, lo, hi, C, unstable_rows=False),
            crown(p, lo, hi, C, unstable_rows=True, unstable_chunk=chunk),
        )
    )


def assert_same(whole, pairs, tol=1e-5):
    np.testing.assert_allclose(pairs[0], whole[0], rtol=tol, atol=tol)
    np.testing.assert_allclose(pairs[1], whole[1], rtol=tol, atol=tol)
    for (pl, pu), (wl, wu) in zip(pairs[2], whole[2], strict=True):
        np.testing.assert_allclose(pl, wl, rtol=tol, atol=tol)
        np.testing.assert_allclose(pu, wu, rtol=tol, atol=tol)


@pytest.mark.parametrize("patches", [True, False])
@pytest.mark.parametrize("chunk", [None, 2])
def test_unstable_pairs_give_the_bounds_of_every_neurons_rows(patches, chunk):
    """CONV_NET (three conv ReLU layers, BatchNorm, a dense ReLU layer): with chunks of 2 pairs, each
    refined layer's unstable pairs fill many chunks (asserted), none of them may be dropped."""
    arch, params, lo, hi, C = conv_case(2, eps=0.08)
    whole, pairs = both_ways(arch, patches, chunk)(params, lo, hi, C)
    assert_same(whole, pairs)
    unstable = [int(jnp.sum(crossing_mask(*b))) for b in whole[2][1:]]
    assert min(unstable) > 4 * 2, unstable  # every refined layer: more unstable pairs than two chunks
    # and the refinement is real: with rows for one neuron per example (the others keep their interval
    # bounds) the refined layers are looser
    width = lambda bounds: sum(float(jnp.sum(hi - lo)) for lo, hi in bounds[1:])
    one = crown_with_intermediate(arch, params, lo, hi, C, patches=patches, unstable_budget=1)
    assert width(pairs[2]) < width(one[2]) - 1e-3


def test_unstable_pairs_on_a_residual_net_equal_every_neurons_rows():
    """Dense rows through ``Add`` merges (windows do not pass them): the pairs are the batch of the pass."""
    arch, in_shape, params = tiny_params("residual", 0)
    x = jax.random.uniform(jax.random.key(3), (3, *in_shape))
    lo, hi = input_box(x, 0.1)
    C = margin_spec(jnp.array([0, 1, 2]), 3)
    whole, pairs = both_ways(arch, "auto", 3)(params, lo, hi, C)
    assert int(jnp.sum(crossing_mask(*whole[2][-1]))) > 3  # the last layer's pairs fill several chunks
    assert_same(whole, pairs)


def test_unstable_pairs_are_sound_at_sampled_points_and_vertices_and_contain_the_exact_range():
    arch, _, params = tiny_params("conv", 1)
    rng = np.random.default_rng(4)
    lo, hi = input_box(jnp.asarray(rng.random((2, 4, 4, 2)), jnp.float32), 0.1)
    C = margin_spec(jnp.array([0, 2]), 3)
    lb, ub, intermediate = crown_with_intermediate(arch, params, lo, hi, C, unstable_rows=True, unstable_chunk=2)
    relus = [i for i, spec in enumerate(arch) if not spec.is_affine]
    for b in range(2):
        pts = sample_box(jax.random.key(b), lo[b], hi[b], 256)
        out = forward(arch, params, pts) @ C[b].T
        assert bool(jnp.all(out >= lb[b] - 1e-4)) and bool(jnp.all(out <= ub[b] + 1e-4))
        for i, (zl, zu) in zip(relus, intermediate, strict=True):  # every pre-activation inside its bounds
            z = forward(arch[:i], params[:i], pts)
            assert bool(jnp.all(z >= zl[b] - 1e-4)) and bool(jnp.all(z <= zu[b] + 1e-4))
    exact_lb, exact_ub = exact_bounds(arch, params, lo, hi, C)
    assert np.all(np.asarray(lb) <= exact_lb + 1e-4) and np.all(np.asarray(ub) >= exact_ub - 1e-4)


@pytest.mark.slow
def test_unstable_pairs_vmap_over_parameter_samples_like_a_loop_and_differentiate_like_every_neurons_rows():
    arch, params, lo, hi, C = conv_case(5)
    bound = lambda p, rows: crown_with_intermediate(
        arch, p, lo, hi, C, unstable_rows=rows, unstable_chunk=3, bound_upper=False
    )[0]
    samples = [jax.tree_util.tree_map(lambda a, s=s: a * (1 + 0.05 * s), params) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *samples)
    batched = jax.jit(jax.vmap(lambda p: bound(p, True)))(stacked)
    for s, p in enumerate(samples):
        np.testing.assert_allclose(batched[s], bound(p, False), rtol=1e-5, atol=1e-5)
    grad = lambda rows: jax.jit(jax.grad(lambda p: jnp.sum(bound(p, rows))))(params)
    pairs, whole = grad(True), grad(False)
    for g_pairs, g_whole in zip(jax.tree_util.tree_leaves(pairs), jax.tree_util.tree_leaves(whole), strict=True):
        np.testing.assert_allclose(g_pairs, g_whole, rtol=1e-4, atol=1e-4)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree_util.tree_leaves(pairs))


def test_bad_unstable_rows_options_are_one_line_errors():
    arch, params, lo, hi, C = conv_case(0)
    with pytest.raises(ValueError, match="unstable_rows must be True, False or 'auto', got 'some'"):
        crown_with_intermediate(arch, params, lo, hi, C, unstable_rows="some")
    with pytest.raises(ValueError, match=r"unstable_chunk must be None .* got 0"):
        crown_with_intermediate(arch, params, lo, hi, C, unstable_chunk=0)


def test_auto_gives_pair_rows_to_large_layers_only():
    """ "auto" keeps the whole-layer pass on small layers (mlp_14x14's 32 neurons: the pair bookkeeping costs
    more than it saves) and takes pairs on conv-sized ones (CNN3's 1 568); True / False are obeyed."""
    from jaxcert.bounds.crown import PAIR_ROWS_MIN_NEURONS, use_pair_rows

    assert not use_pair_rows("auto", 32) and use_pair_rows("auto", 1568)
    assert use_pair_rows("auto", PAIR_ROWS_MIN_NEURONS) and not use_pair_rows("auto", PAIR_ROWS_MIN_NEURONS - 1)
    assert use_pair_rows(True, 1) and not use_pair_rows(False, 10**6)


@pytest.mark.slow
@pytest.mark.parametrize("unstable_rows", ["auto", True])
def test_vmapped_value_and_gradient_over_members_runs_and_equals_a_loop(unstable_rows):
    """``vmap`` of the pair pass's value-and-gradient crashed XLA:CPU (segmentation fault) on CNN3, whose
    second layer (1 568 neurons) takes pairs: under ``vmap`` every pass is the whole-layer one."""
    from jaxcert.bounds import margin_lower_bounds
    from jaxcert.bounds.loss import certified_cross_entropy
    from jaxcert.nets import get_architecture, init_params

    arch = get_architecture("cnn3", dataset="fashion_mnist")
    params = init_params(arch, (28, 28, 1), seed=0)
    x, y = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1)), jnp.arange(4)

    def loss(p):
        bounds = margin_lower_bounds(arch, p, x, y, 0.1, relaxation="crown", unstable_rows=unstable_rows)
        return jnp.mean(certified_cross_entropy(bounds))

    members = [params, jax.tree.map(lambda v: v * 1.01, params)]
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *members)
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss)))(stacked)
    for m, member in enumerate(members):
        value, grad = jax.jit(jax.value_and_grad(loss))(member)
        np.testing.assert_allclose(values[m], value, rtol=1e-5)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grad), strict=True):
            np.testing.assert_allclose(got[m], want, rtol=1e-4, atol=1e-6)
