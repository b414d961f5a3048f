"""alpha-crown-full with per-start-node intermediate slopes and best-per-row keeping (options ``start_nodes``,
``keep_best``, ``max_slope_bytes``): strictly tighter than shared slopes where rows of one pass want different
slopes, sound, never looser than CROWN, inside the exact MILP bounds, memory plan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import get_relaxation
from jaxcert.bounds.alpha_intermediate import MAX_SLOPE_BYTES, start_node_bytes, start_node_plan
from jaxcert.bounds.exact import exact_bounds
from jaxcert.nets import Dense, Flatten, ReLU, get_architecture
from tests.soundness import NET_NAMES, assert_sound
from tests.test_alpha_crown_intermediate import DEEP, deep_box
from tests.test_crown import assert_contains, example_box, net_arch, split_rows, with_identity_rows

#: h = relu(x) and q = relu(x + 2) = x + 2 (stable) per input; the second ReLU's inputs are
#: z_a = h1 + h2 - 0.3 x1 - 0.7 x2 and z_b = h1 + h2 - 0.7 x1 - 0.3 x2 (both ≥ 0 on the box);
#: y = -relu(z_a) - relu(z_b).
#: The lower bound of z_a is exact with the slopes (0.3, 0.7) of (h1, h2), z_b's with (0.7, 0.3): one shared
#: slope per neuron cannot give both, one per start-node row can.
CONFLICT = (Flatten(), Dense(4), ReLU(), Dense(2), ReLU(), Dense(1))


def conflict_params() -> list[dict[str, jax.Array]]:
    W1 = jnp.array([[1, 0, 1, 0], [0, 1, 0, 1]], jnp.float32)
    W2 = jnp.array([[1, 1], [1, 1], [-0.3, -0.7], [-0.7, -0.3]], jnp.float32)
    return [
        {},
        {"kernel": W1, "bias": jnp.array([0, 0, 2, 2], jnp.float32)},
        {},
        {"kernel": W2, "bias": jnp.array([2.0, 2.0], jnp.float32)},
        {},
        {"kernel": -jnp.ones((2, 1), jnp.float32), "bias": jnp.zeros(1, jnp.float32)},
    ]


def test_per_start_node_slopes_are_strictly_tighter_where_rows_of_a_pass_want_different_slopes():
    params, lo, hi = conflict_params(), -jnp.ones((1, 2)), jnp.ones((1, 2))
    fn = get_relaxation("alpha-crown-full")
    run = jax.jit(lambda p: [fn(CONFLICT, p, lo, hi, None, steps=20, start_nodes=s) for s in (False, True)])
    (shared_lb, shared_ub), (rows_lb, rows_ub) = run(params)
    exact_lb, exact_ub = exact_bounds(CONFLICT, params, lo, hi, None)
    crown_lb, _ = get_relaxation("crown")(CONFLICT, params, lo, hi, None)
    assert np.all(rows_lb >= shared_lb - 1e-6) and np.all(rows_ub <= shared_ub + 1e-6)  # never worse
    assert float(jnp.max(rows_lb - shared_lb)) > 0.1, (rows_lb, shared_lb)  # strictly better by a margin
    assert float(jnp.min(shared_lb - crown_lb)) > 0.1  # the shared slopes do help: the gap is the sharing
    assert np.all(rows_lb <= exact_lb + 1e-5) and np.all(rows_ub >= exact_ub - 1e-5)
    assert float(np.max(exact_lb - rows_lb)) < 0.05  # per start node comes close to the exact bound


#: a row budget and small row chunks for the intermediate passes (CROWN takes them too)
BUDGET = {"unstable_budget": 2, "max_rows_bytes": 4096}


@functools.cache
def option_family(net: str, steps: int = 6):
    """Jitted ``(params, lo, hi, C) -> {name: (lb, ub, logit_lb, logit_ub)}`` for every new option."""
    arch, _ = net_arch(net)
    variants = {
        "rows": {"start_nodes": True},
        "rows-dense": {"start_nodes": True, "patches": False},
        "rows-windows": {"start_nodes": True, "patches": True},
        "rows-example": {"start_nodes": True, "keep_best": "example"},
        "rows-budget": {"start_nodes": True, **BUDGET},
        "shared-row": {"start_nodes": False},
        "auto-none": {"max_slope_bytes": 0},
    }

    def fn(params, lo, hi, C):
        spec = with_identity_rows(C)
        out = {
            name: split_rows(*get_relaxation("alpha-crown-full")(arch, params, lo, hi, spec, steps=steps, **o), C)
            for name, o in variants.items()
        }
        crown = get_relaxation("crown")
        out["crown"] = split_rows(*crown(arch, params, lo, hi, spec), C)
        out["crown-budget"] = split_rows(*crown(arch, params, lo, hi, spec, **BUDGET), C)
        return out

    return jax.jit(fn)


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@pytest.mark.parametrize(("seed", "eps"), [(1, 0.05), (2, 0.2)])
def test_every_option_is_sound_and_never_looser_than_crown_on_any_row(net, seed, eps):
    _, params, lo, hi, C = example_box(net, seed, eps)
    bounds = option_family(net)(params, lo, hi, C)
    assert_contains(net, params, lo, hi, C, bounds, seed)
    crown, crown_budget = bounds.pop("crown"), bounds.pop("crown-budget")
    for name, b in bounds.items():
        ref = crown_budget if name == "rows-budget" else crown  # CROWN with the same row budget
        for k in (0, 2):  # margins and logits
            assert np.all(b[k] >= ref[k] - 1e-5), name
            assert np.all(b[k + 1] <= ref[k + 1] + 1e-5), name
    # the rows of a window and of a dense map are the same rows: the same bounds
    for k in range(4):
        np.testing.assert_allclose(bounds["rows-windows"][k], bounds["rows-dense"][k], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
def test_every_option_is_sound_on_sampled_points_and_vertices(net):
    for options in ({"start_nodes": True}, {"start_nodes": True, "keep_best": "example"}, {"start_nodes": "auto"}):
        assert_sound("alpha-crown-full", net, 3, 0.15, steps=5, **options)


@pytest.mark.slow
def test_per_start_node_alpha_crown_lies_between_the_exact_bounds_and_crown():
    params, lo, hi, C = deep_box(3, batch=2)
    fn = get_relaxation("alpha-crown-full")
    run = jax.jit(
        lambda p: (
            fn(DEEP, p, lo, hi, C, steps=10, start_nodes=True),
            fn(DEEP, p, lo, hi, C, steps=10, start_nodes=False),
            get_relaxation("crown")(DEEP, p, lo, hi, C),
        )
    )
    (lb, ub), (shared_lb, shared_ub), (crown_lb, crown_ub) = run(params)
    exact_lb, exact_ub = exact_bounds(DEEP, params, lo, hi, C)
    assert np.all(lb <= exact_lb + 1e-4) and np.all(ub >= exact_ub - 1e-4)
    assert np.all(lb >= crown_lb - 1e-5) and np.all(ub <= crown_ub + 1e-5)
    # tighter than CROWN overall, and on these nets at least as tight as the shared slopes on average
    assert np.sum(lb - crown_lb) + np.sum(crown_ub - ub) > 1e-2
    assert np.mean(lb - shared_lb) + np.mean(shared_ub - ub) >= -1e-4


@pytest.mark.slow
def test_per_row_keeping_is_never_looser_than_per_example_keeping_of_the_same_slopes_at_zero_steps():
    """With no step both return CROWN; a differentiable result in the parameters with per-row keeping."""
    arch, params, lo, hi, C = example_box("mlp", 6, 0.1)
    fn = get_relaxation("alpha-crown-full")
    crown_lb, _ = get_relaxation("crown")(arch, params, lo, hi, C)
    lb0, _ = fn(arch, params, lo, hi, C, steps=0, start_nodes=True)
    np.testing.assert_allclose(lb0, crown_lb, rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(fn(arch, p, lo, hi, C, steps=3, start_nodes=True)[0])))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves) and any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_the_memory_plan_gives_per_row_slopes_to_the_passes_that_fit():
    cnn3, cnn5 = get_architecture("cnn3"), get_architecture("cnn5")
    shape = (28, 28, 1)
    costs = start_node_bytes(cnn3, shape, 32)
    assert list(costs) == [4]  # CNN3: one pass (ReLU 2); the first ReLU's bounds are exact interval ones
    # 3136 rows × a 4×4×16 window on ReLU 1, six float32 copies, per example
    assert costs[4] == 6 * 4 * 32 * 3136 * 256
    assert start_node_plan(cnn3, shape, 32) == {4}
    assert start_node_plan(cnn3, shape, 32, max_slope_bytes=costs[4] - 1) == frozenset()
    assert start_node_plan(cnn3, shape, 32, start_nodes=False) == frozenset()
    # dense rows cost the whole layer per row; a row budget cuts the rows
    assert start_node_bytes(cnn3, shape, 32, patches=False)[4] == 6 * 4 * 32 * 3136 * 3136
    assert start_node_bytes(cnn3, shape, 32, unstable_budget=100)[4] == 6 * 4 * 32 * 200 * 256
    plan = start_node_plan(cnn5, shape, 32, max_slope_bytes=MAX_SLOPE_BYTES)
    costs5 = start_node_bytes(cnn5, shape, 32)
    assert sum(costs5[j] for j in plan) <= MAX_SLOPE_BYTES
    assert all(costs5[j] >= max(costs5[i] for i in plan) for j in costs5 if j not in plan)  # cheapest first


def test_bad_options_give_one_line_errors():
    arch, params, lo, hi, C = example_box("mlp", 0, 0.1)

    def trace(name, **options):
        return jax.eval_shape(lambda p: get_relaxation(name)(arch, p, lo, hi, C, **options), params)

    for options, message in (
        ({"start_nodes": "yes"}, "start_nodes must be True, False or 'auto'"),
        ({"keep_best": "best"}, "keep_best must be one of"),
        ({"max_slope_bytes": -1}, "max_slope_bytes must be a non-negative int"),
    ):
        with pytest.raises(ValueError, match=message):
            trace("alpha-crown-full", **options)
    with pytest.raises(ValueError, match="only apply with optimize_intermediate=True"):
        trace("alpha-crown", start_nodes=True)
