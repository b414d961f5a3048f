import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.analysis import (
    bias_sweep_example,
    certified_loss_ratio,
    clean_margins,
    margin_bounds,
    margin_slack,
    slack_ratio,
    tightness,
)
from jaxcert.bounds import relaxation_names
from tests.soundness import TINY_NETS, tiny_params

#: Relaxations compared with the exact (MILP) reference (one per propagation scheme; the slope variants
#: share CROWN's code and are checked by the relaxations' own soundness tests).
RELAXATIONS = ["ibp", "hbox", "deepz", "crown", "crown-ibp"]
Y = jnp.array([0, 2])
TOL = 1e-4  # float32 bounds against float64 HiGHS optima


def batch(net, seed):
    _, in_shape, params = tiny_params(net, seed)
    return params, jax.random.uniform(jax.random.key(seed), (2, *in_shape))


def test_every_compared_relaxation_is_registered():
    missing = sorted(set(RELAXATIONS) - set(relaxation_names()))
    assert not missing, f"relaxations not registered: {missing}"


@pytest.mark.slow
@given(seed=st.integers(0, 10_000), eps=st.floats(0.01, 0.3))
def test_every_relaxation_is_looser_than_the_exact_bounds(seed, eps):
    net = "mlp"
    arch, _ = TINY_NETS[net]
    params, x = batch(net, seed)
    exact_lb, exact_ub = margin_bounds(arch, params, x, Y, eps, relaxation="milp")
    margins = clean_margins(arch, params, x, Y)
    exact_slack = margin_slack(margins, exact_lb)
    assert bool(jnp.all(exact_slack >= -TOL))  # the clean point lies in the region
    for relaxation in RELAXATIONS:
        lb, ub = margin_bounds(arch, params, x, Y, eps, relaxation=relaxation)
        assert bool(jnp.all(lb <= exact_lb + TOL)) and bool(jnp.all(ub >= exact_ub - TOL)), relaxation
        ratio = slack_ratio(margin_slack(margins, lb), exact_slack)
        assert float(ratio) >= 1.0 - TOL, (relaxation, float(ratio))
        assert float(certified_loss_ratio(lb, exact_lb)) >= 1.0 - TOL, relaxation


@pytest.mark.slow
@pytest.mark.parametrize("relaxation", ["ibp", "crown", "crown-zero"])
def test_triangle_lp_with_the_relaxations_own_intermediate_bounds_is_tighter(relaxation):
    arch, _ = TINY_NETS["mlp"]
    params, x = batch("mlp", 3)
    vs_lp = tightness(arch, params, x, Y, 0.15, relaxation=relaxation, reference="lp")
    vs_exact = tightness(arch, params, x, Y, 0.15, relaxation=relaxation, reference="milp")
    assert float(vs_lp.slack_ratio) >= 1.0 - TOL
    assert float(vs_lp.width) >= float(vs_lp.reference_width) - TOL
    # the LP is itself a relaxation: the exact reference has no more slack than it
    assert float(vs_exact.slack_ratio) >= float(vs_lp.slack_ratio) - TOL
    assert float(vs_lp.loss_ratio) >= 1.0 - TOL


@pytest.mark.slow
def test_crown_is_exact_where_no_neuron_crosses():
    # on the sweep example at b = 0 both hidden neurons are stable active: CROWN's margin bound is the
    # exact one, IBP's is not (it loses the correlation of ReLU(x + b) - ReLU(x))
    ex = bias_sweep_example()
    crown = tightness(ex.arch, ex.params, ex.x, ex.y, ex.eps, relaxation="crown", reference="milp")
    ibp = tightness(ex.arch, ex.params, ex.x, ex.y, ex.eps, relaxation="ibp", reference="milp")
    assert float(crown.slack_ratio) == pytest.approx(1.0, abs=1e-4)
    assert float(crown.width) == pytest.approx(float(crown.reference_width), abs=1e-5)
    assert float(ibp.slack_ratio) > 1.5


def test_a_relaxation_against_itself_has_ratio_one():
    arch, _ = TINY_NETS["mlp"]
    params, x = batch("mlp", 1)
    t = tightness(arch, params, x, Y, 0.1, relaxation="ibp", reference="ibp")
    assert float(t.slack_ratio) == pytest.approx(1.0) and float(t.loss_ratio) == pytest.approx(1.0)
    assert float(t.width) == pytest.approx(float(t.reference_width))


def test_margin_bounds_vmap_over_weight_samples():
    arch, _ = TINY_NETS["mlp"]
    params, x = batch("mlp", 2)
    scales = jnp.array([0.5, 1.0, 2.0])
    stacked = jax.vmap(lambda s: jax.tree.map(lambda a: a * s, params))(scales)
    lbs, ubs = jax.vmap(lambda p: margin_bounds(arch, p, x, Y, 0.1, relaxation="crown"))(stacked)
    for i in range(scales.shape[0]):
        lb, ub = margin_bounds(arch, jax.tree.map(lambda a: a[i], stacked), x, Y, 0.1, relaxation="crown")
        np.testing.assert_allclose(lbs[i], lb, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ubs[i], ub, rtol=1e-5, atol=1e-5)


def test_slack_ratio_edge_cases():
    assert float(slack_ratio(jnp.zeros(3), jnp.zeros(3))) == 1.0
    assert float(slack_ratio(jnp.ones(3), jnp.zeros(3))) == np.inf
    assert float(slack_ratio(jnp.array([2.0, 4.0]), jnp.array([1.0, 2.0]))) == pytest.approx(2.0)


def test_tightness_rejects_unknown_names_and_bad_labels():
    arch, _ = TINY_NETS["mlp"]
    params, x = batch("mlp", 0)
    with pytest.raises(ValueError, match="unknown relaxation"):
        tightness(arch, params, x, Y, 0.1, relaxation="ibp", reference="nope")
    with pytest.raises(ValueError, match="labels shape"):
        margin_bounds(arch, params, x, jnp.array([0, 1, 2]), 0.1)
