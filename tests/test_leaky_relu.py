"""LeakyReLU ``y = max(x, a x)``, the second activation kind of the rule table (issue 18).

Every relaxation with LeakyReLU's rules is sound on small dense and conv nets (sampled points and box
vertices), CROWN is at least as tight as IBP, the rules equal ReLU's at ``a = 0`` and the linear net's
range as ``a → 1``; the 1-D crossing neuron gets the hand-computed chord and lower line; relaxations
without the rules raise ``UnsupportedLayerError`` naming LeakyReLU.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcert.analysis.unstable import unstable_counts
from jaxcert.bounds import UnsupportedLayerError, get_relaxation, input_box, layer_rules, margin_spec, relaxation_names
from jaxcert.bounds.exact import exact_bounds, lp_bounds
from jaxcert.bounds.ibp import interval_layers
from jaxcert.bounds.leaky_relu_rules import leaky_relu_interval, leaky_relu_lines
from jaxcert.bounds.loss import certified_cross_entropy
from jaxcert.bounds.loss_fusion import fused_certified_loss
from jaxcert.bounds.registry import make_bound_fn
from jaxcert.bounds.relu_slopes import relu_lines
from jaxcert.nets import Conv, Dense, Flatten, LeakyReLU, Network, ReLU, forward, init_params, params_of

#: Relaxations that need a rule LeakyReLU does not have ("slopes", "deepz", "hbox").
RAISING = ("alpha-crown", "alpha-crown-full", "crown-lee", "deepz", "hbox")
SUPPORTED = tuple(n for n in relaxation_names() if n not in RAISING)


def dense_arch(a: float = 0.1, b: float = 0.3):
    return (Flatten(), Dense(6), LeakyReLU(a), Dense(5), LeakyReLU(b), Dense(3)), (4,)


def conv_arch(a: float = 0.1, b: float = 0.2):
    return (Conv(2, 3, 1, 1), LeakyReLU(a), Conv(2, 3, 1, 1), LeakyReLU(b), Flatten(), Dense(3)), (4, 4, 1)


NETS = {"dense": dense_arch, "conv": conv_arch}


def case(net: str = "dense", seed: int = 0, eps: float = 0.15, **slopes: float):
    arch, in_shape = NETS[net](**slopes)
    params = init_params(arch, in_shape, seed=seed)
    x = jnp.asarray(np.random.default_rng(seed).uniform(0.2, 0.8, (2, *in_shape)), jnp.float32)
    lo, hi = input_box(x, eps)
    return arch, params, lo, hi, margin_spec(jnp.array([0, 2]), 3)


def points(lo: jax.Array, hi: jax.Array, seed: int = 0, n: int = 300) -> jax.Array:
    """(n', B, *shape): uniform samples in the box and box vertices (all of them up to 2^8, else random)."""
    rng = np.random.default_rng(seed)
    lo_, hi_ = np.asarray(lo), np.asarray(hi)
    inside = rng.uniform(size=(n, *lo_.shape))
    d = lo_[0].size
    if d <= 8:
        corners = np.array(list(itertools.product([0.0, 1.0], repeat=d))).reshape(-1, 1, *lo_.shape[1:])
        corners = np.broadcast_to(corners, (len(corners), *lo_.shape))
    else:
        corners = rng.integers(0, 2, size=(n, *lo_.shape)).astype(float)
    t = np.concatenate([inside, corners])
    return jnp.asarray(lo_ + t * (hi_ - lo_), jnp.float32)


def outputs(arch, params, xs: jax.Array, C: jax.Array) -> np.ndarray:
    with jax.default_matmul_precision("highest"):
        f = jax.vmap(lambda x: forward(arch, params, x))(xs)
    return np.asarray(jnp.einsum("brk,nbk->nbr", C, f))


def test_the_layer_is_max_x_ax_and_the_nnx_module_agrees():
    arch, in_shape = conv_arch()
    x = jnp.linspace(-2, 2, 9)
    np.testing.assert_array_equal(LeakyReLU(0.25).apply({}, x), jnp.where(x >= 0, x, 0.25 * x))
    model = Network(arch, in_shape, rngs=nnx.Rngs(0))
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(3, *in_shape)), jnp.float32)
    np.testing.assert_allclose(model(xs), forward(arch, params_of(model), xs), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="slope"):
        LeakyReLU(1.0)
    with pytest.raises(ValueError, match="slope"):
        LeakyReLU(-0.1)


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", SUPPORTED)
def test_every_supported_relaxation_is_sound(name, net):
    arch, params, lo, hi, C = case(net)
    lb, ub = get_relaxation(name)(arch, params, lo, hi, C)
    got = outputs(arch, params, points(lo, hi), C)
    assert np.all(np.isfinite(lb)) and np.all(np.isfinite(ub))
    assert np.all(got >= np.asarray(lb)[None] - 1e-5), name
    assert np.all(got <= np.asarray(ub)[None] + 1e-5), name


@pytest.mark.parametrize("options", [{"unstable_budget": 2}, {"patches": True}, {"intersect_ibp": False}])
def test_crown_options_are_sound_on_the_conv_net(options):
    """The budget (non-refined neurons keep their interval and get the kind's lines) and patches mode."""
    arch, params, lo, hi, C = case("conv")
    lb, ub = get_relaxation("crown")(arch, params, lo, hi, C, **options)
    got = outputs(arch, params, points(lo, hi), C)
    assert np.all(got >= np.asarray(lb)[None] - 1e-5) and np.all(got <= np.asarray(ub)[None] + 1e-5)
    full = get_relaxation("crown")(arch, params, lo, hi, C)
    if "unstable_budget" in options:  # refining fewer neurons can only loosen
        assert np.all(np.asarray(lb) <= np.asarray(full[0]) + 1e-5)
    elif "patches" in options:  # windows carry the same rows as dense back-substitution
        np.testing.assert_allclose(np.stack([lb, ub]), np.stack(full), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("net", sorted(NETS))
def test_crown_is_at_least_as_tight_as_ibp(net):
    arch, params, lo, hi, C = case(net)
    ibp = get_relaxation("ibp")(arch, params, lo, hi, C)
    crown = get_relaxation("crown")(arch, params, lo, hi, C)
    assert np.all(np.asarray(crown[0]) >= np.asarray(ibp[0]) - 1e-5)
    assert np.all(np.asarray(crown[1]) <= np.asarray(ibp[1]) + 1e-5)
    assert np.sum(np.asarray(ibp[1] - ibp[0])) > np.sum(np.asarray(crown[1] - crown[0]))  # and strictly, here


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", ["ibp", "crown", "crown-ibp", "crown-zero", "crown-parallel", "crown-given"])
def test_at_slope_zero_the_bounds_are_relus(name, net):
    arch, params, lo, hi, C = case(net, a=0.0, b=0.0)
    relu_arch = tuple(ReLU() if isinstance(s, LeakyReLU) else s for s in arch)
    leaky = get_relaxation(name)(arch, params, lo, hi, C)
    relu = get_relaxation(name)(relu_arch, params, lo, hi, C)
    np.testing.assert_allclose(np.stack(leaky), np.stack(relu), rtol=0, atol=1e-6)


def test_at_slope_zero_the_rules_are_relus_bitwise():
    rng = np.random.default_rng(0)
    lo = jnp.asarray(rng.normal(size=(3, 50)), jnp.float32)
    hi = lo + jnp.asarray(rng.uniform(0, 2, size=(3, 50)), jnp.float32)
    for rule in ("adaptive", "zero", "one", "parallel", "zero-c", "one-c", "soft"):
        for got, want in zip(leaky_relu_lines(lo, hi, rule, negative_slope=0.0), relu_lines(lo, hi, rule), strict=True):
            np.testing.assert_array_equal(got, want)
    given = leaky_relu_lines(lo, hi, "given", negative_slope=0.0, slopes=0.3)
    for got, want in zip(given, relu_lines(lo, hi, "given", slopes=0.3), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(leaky_relu_interval(lo, hi, negative_slope=0.0)[1], jax.nn.relu(hi))


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", ["crown", "crown-ibp"])
def test_as_the_slope_tends_to_one_the_bounds_tend_to_the_linear_range(name, net):
    arch, params, lo, hi, C = case(net, a=0.999, b=0.999)
    linear_arch = tuple(s for s in arch if not isinstance(s, LeakyReLU))
    linear_params = [p for s, p in zip(arch, params, strict=True) if not isinstance(s, LeakyReLU)]
    with jax.default_matmul_precision("highest"):
        centre = (lo + hi) / 2
        jac = jax.vmap(jax.jacobian(lambda x: forward(linear_arch, linear_params, x[None])[0]))(centre)
        mid = jnp.einsum("brk,bk->br", C, forward(linear_arch, linear_params, centre))
        rad = jnp.einsum("brk,bk...->br...", C, jac)
        rad = jnp.sum(jnp.abs(rad.reshape(*rad.shape[:2], -1)) * ((hi - lo) / 2).reshape(lo.shape[0], 1, -1), -1)
    lb, ub = get_relaxation(name)(arch, params, lo, hi, C)
    np.testing.assert_allclose(lb, mid - rad, atol=1e-2)
    np.testing.assert_allclose(ub, mid + rad, atol=1e-2)


@pytest.mark.parametrize(("low", "u", "alpha"), [(-1.0, 3.0, 1.0), (-3.0, 1.0, 0.2)])
def test_one_crossing_neuron_gets_the_hand_computed_lines_and_bounds(low, u, alpha):
    """y = leaky(x) on [l, u], a = 0.2: the chord through (l, a l), (u, u) and the min-area lower slope."""
    a = 0.2
    lines = leaky_relu_lines(jnp.array([low]), jnp.array([u]), negative_slope=a)
    s, t = (u - a * low) / (u - low), -(1 - a) * u * low / (u - low)
    np.testing.assert_allclose(lines.upper_slope, [s], rtol=1e-6)
    np.testing.assert_allclose(lines.upper_intercept, [t], rtol=1e-6)
    np.testing.assert_allclose(s * low + t, a * low, rtol=1e-6)  # the chord passes through both ends
    np.testing.assert_allclose(lines.lower_slope, [alpha], rtol=1e-6)  # 1 if u >= -low else a
    arch = (Dense(1), LeakyReLU(a), Dense(1))
    identity = {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros(1)}
    params = [identity, {}, identity]
    C = jnp.array([[[1.0], [-1.0]]])  # y and -y
    lb, ub = get_relaxation("crown")(arch, params, jnp.array([[low]]), jnp.array([[u]]), C)
    # y ≤ s u + t = u (exact); y ≥ α low, exact (= a low) when α = a
    np.testing.assert_allclose(ub[0], [u, -alpha * low], rtol=1e-6)
    np.testing.assert_allclose(lb[0], [alpha * low, -u], rtol=1e-6)
    assert (alpha == a) == bool(np.isclose(lb[0, 0], a * low))


def test_interval_rule_maps_the_ends():
    lo, hi = leaky_relu_interval(jnp.array([-2.0, 1.0, -3.0]), jnp.array([-1.0, 2.0, 4.0]), negative_slope=0.5)
    np.testing.assert_array_equal(lo, [-1.0, 1.0, -1.5])
    np.testing.assert_array_equal(hi, [-0.5, 2.0, 4.0])


def test_given_slopes_must_lie_between_a_and_one():
    lo, hi = jnp.array([[-1.0, -1.0]]), jnp.array([[1.0, 2.0]])
    given = leaky_relu_lines(lo, hi, "given", negative_slope=0.3, slopes=0.5)
    np.testing.assert_array_equal(given.lower_slope, [[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"\[0.3, 1\]"):
        leaky_relu_lines(lo, hi, "given", negative_slope=0.3, slopes=0.2)
    traced = jax.jit(lambda s: leaky_relu_lines(lo, hi, "given", negative_slope=0.3, slopes=s).lower_slope)(0.1)
    np.testing.assert_allclose(traced, [[0.3, 0.3]])  # projected onto [a, 1]


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("name", RAISING)
def test_relaxations_without_the_rules_raise(name, net):
    arch, params, lo, hi, C = case(net)
    with pytest.raises(UnsupportedLayerError, match=rf"relaxation '{name}' has no rule for layer kind 'LeakyReLU'"):
        get_relaxation(name)(arch, params, lo, hi, C)


def test_the_exact_references_raise():
    arch, params, lo, hi, C = case("dense")
    for fn in (exact_bounds, lp_bounds):
        with pytest.raises(UnsupportedLayerError, match=r"'LeakyReLU'.*'milp'"):
            fn(arch, params, lo, hi, C)
    assert not layer_rules.has_rule(LeakyReLU(), "slopes")


def test_gradients_of_the_crown_ibp_certified_loss_are_finite():
    arch, params, lo, hi, C = case("conv")

    def loss(p):
        lb, _ = get_relaxation("crown-ibp")(arch, p, lo, hi, C, bound_upper=False)
        return jnp.mean(certified_cross_entropy(lb))

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_loss_fusion_bounds_the_cross_entropy_on_the_box():
    arch, in_shape = conv_arch()
    params = init_params(arch, in_shape, seed=0)
    x = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (2, *in_shape)), jnp.float32)
    y = jnp.array([0, 2])
    fused = fused_certified_loss(arch, params, x, y, 0.15).loss
    lo, hi = input_box(x, 0.15)
    with jax.default_matmul_precision("highest"):
        logits = jax.vmap(lambda p: forward(arch, params, p))(points(lo, hi))
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[None, :, None], axis=-1)[..., 0]
    assert np.all(np.isfinite(fused)) and np.all(np.asarray(ce) <= np.asarray(fused)[None] + 1e-5)


def test_unstable_counts_use_the_interval_rule():
    arch, in_shape = dense_arch()
    params = init_params(arch, in_shape, seed=0)
    x = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (2, *in_shape)), jnp.float32)
    ibp = unstable_counts(arch, params, x, 0.15)
    crown = unstable_counts(arch, params, x, 0.15, relaxation="crown")
    layers = interval_layers(arch, params, *input_box(x, 0.15))
    expected = [np.sum((np.asarray(layers[i][0]) < 0) & (np.asarray(layers[i][1]) > 0), axis=1) for i in (2, 4)]
    np.testing.assert_array_equal(ibp.unstable, expected)
    np.testing.assert_array_equal(ibp.unstable + ibp.active + ibp.inactive, [[6, 6], [5, 5]])
    assert np.all(np.asarray(crown.unstable) <= np.asarray(ibp.unstable)) and int(np.sum(ibp.unstable)) > 0


def test_vmap_over_parameter_samples_equals_a_loop():
    arch, in_shape = dense_arch()
    samples = [init_params(arch, in_shape, seed=s) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *samples)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4)), jnp.float32)
    C = margin_spec(jnp.array([0, 1]), 3)
    fn = make_bound_fn(arch, "crown-ibp")
    lb, ub = jax.vmap(fn, in_axes=(0, None, None, None))(stacked, x, 0.1, C)
    for k, p in enumerate(samples):
        lb_k, ub_k = fn(p, x, 0.1, C)
        np.testing.assert_allclose(lb[k], lb_k, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ub[k], ub_k, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", sorted(NETS))
def test_onnx_export_uses_leaky_relu_with_its_alpha(net):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from jaxcert.export import to_onnx

    arch, in_shape = NETS[net]()
    params = init_params(arch, in_shape, seed=1)
    model = to_onnx(arch, params, in_shape)
    leaky_nodes = [n for n in model.graph.node if n.op_type == "LeakyRelu"]
    alphas = [onnx.helper.get_attribute_value(att) for n in leaky_nodes for att in n.attribute]
    np.testing.assert_allclose(alphas, [s.slope for s in arch if isinstance(s, LeakyReLU)], rtol=1e-6)
    x = np.random.default_rng(2).normal(size=(5, *in_shape)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(forward(arch, params, x))
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-5, atol=1e-5)
