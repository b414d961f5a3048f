"""CROWN / DeepPoly and its lower-slope variants: soundness, exact references, orderings, continuity.

To keep compilation time low, every variant of the family is computed by one jitted function per
network (``crown_family``), with and without a spec, together with the pre-activation bounds it used.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcert.bounds import certified_cross_entropy, get_relaxation, ibp_bounds, input_box, margin_spec
from jaxcert.bounds.crown import crown_with_intermediate, relu_indices
from jaxcert.bounds.exact import exact_bounds, lp_bounds
from jaxcert.bounds.ibp import interval_layers
from jaxcert.nets import Dense, Flatten, Normalize, ReLU, forward, init_params, shapes
from tests.soundness import NET_NAMES, TINY_NETS, tiny_params

#: The CROWN family registered by jaxcert.bounds.crown, with the lower-slope rule each one uses.
CROWN_VARIANTS = {
    "crown": "adaptive",
    "deeppoly": "adaptive",
    "crown-zero": "zero",
    "crown-one": "one",
    "crown-parallel": "parallel",
    "crown-zero-c": "zero-c",
    "crown-one-c": "one-c",
    "crown-soft": "soft",
    "crown-given": "given",
}
#: A net with a single ReLU layer (for theorem-backed orderings and alpha-CROWN ≈ LP).
ONE_LAYER = ((Normalize((0.3,), (0.4,)), Flatten(), Dense(6), ReLU(), Dense(3)), (4, 1))
BATCH = 3


def net_arch(net: str):
    return ONE_LAYER if net == "one_layer" else TINY_NETS[net]


def example_box(net: str, seed: int, eps: float, labels: bool = True):
    """Params, input box (batch 3) and margin spec of a tiny net (TINY_NETS or "one_layer")."""
    if net == "one_layer":
        arch, in_shape = ONE_LAYER
        params = init_params(arch, in_shape, seed=seed)
        params = [{k: v + 0.2 * (k == "bias") for k, v in p.items()} for p in params]
    else:
        arch, in_shape, params = tiny_params(net, seed)
    x = np.random.default_rng(seed + 17).random((BATCH, *in_shape), dtype=np.float32)
    lo, hi = input_box(jnp.asarray(x), eps)
    C = margin_spec(jnp.arange(BATCH) % 3, 3) if labels else None
    return arch, params, lo, hi, C


def random_slopes(net: str, seed: int) -> list[jax.Array]:
    """Random lower slopes in [0, 1], one (B, *shape) array per ReLU layer."""
    arch, in_shape = net_arch(net)
    layer_shapes = shapes(arch, in_shape)
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.random((BATCH, *layer_shapes[i])), jnp.float32) for i in relu_indices(arch)]


def with_identity_rows(C: jax.Array) -> jax.Array:
    """The spec ``[C; I]``: the margins and the logits bounded in one pass."""
    n = C.shape[2]
    return jnp.concatenate([C, jnp.broadcast_to(jnp.eye(n, dtype=C.dtype), (C.shape[0], n, n))], axis=1)


def split_rows(lb: jax.Array, ub: jax.Array, C: jax.Array) -> tuple[jax.Array, ...]:
    """``(lb, ub, logit_lb, logit_ub)`` from bounds of ``[C; I]``."""
    k = C.shape[1]
    return lb[:, :k], ub[:, :k], lb[:, k:], ub[:, k:]


@functools.cache
def crown_family(net: str):
    """Jitted ``(params, lo, hi, C, slopes) -> {name: (lb, ub, logit_lb, logit_ub, pre-activation bounds)}``.

    Each variant bounds the margins and the logits in one pass, with the stacked spec ``[C; I]``;
    "crown" also bounds the logits with ``C=None`` (checked to give the same as the identity rows).
    """
    arch, _ = net_arch(net)

    def fn(params, lo, hi, C, slopes):
        out = {}
        for name, rule in CROWN_VARIANTS.items():
            if name == "deeppoly":
                continue  # registered as the very same function and options as "crown" (checked below)
            opts = {"lower_slopes": slopes} if rule == "given" else {}
            lb, ub, pre = crown_with_intermediate(arch, params, lo, hi, with_identity_rows(C), lower_slope=rule, **opts)
            out[name] = (*split_rows(lb, ub, C), pre)
        out["crown, C=None"] = get_relaxation("crown")(arch, params, lo, hi, None)
        return out

    return jax.jit(fn)


def family_bounds(net: str, seed: int, eps: float):
    arch, params, lo, hi, C = example_box(net, seed, eps)
    bounds = crown_family(net)(params, lo, hi, C, random_slopes(net, seed))
    logits_without_spec = bounds.pop("crown, C=None")
    np.testing.assert_allclose(logits_without_spec, bounds["crown"][2:4], rtol=1e-5, atol=1e-5)
    return arch, params, lo, hi, C, bounds


@functools.cache
def jit_forward(net: str):
    arch, _ = net_arch(net)
    return jax.jit(lambda params, x: forward(arch, params, x))


def box_samples(seed: int, lo: jax.Array, hi: jax.Array, n: int) -> np.ndarray:
    """``n`` uniform points and ``n`` random vertices of each box: (B, 2n, *input) (numpy: no compilation)."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(lo)[:, None], np.asarray(hi)[:, None]
    shape = (lo.shape[0], n, *lo.shape[2:])
    uniform = lo + rng.random(shape, dtype=np.float32) * (hi - lo)
    vertices = np.where(rng.random(shape) < 0.5, hi, lo)
    return np.concatenate([uniform, vertices], axis=1)


def assert_contains(net: str, params, lo, hi, C, bounds: dict, seed: int = 0, n: int = 256) -> None:
    """Sampled points and vertices of each box map inside every ``(lb, ub, logit_lb, logit_ub, ...)``."""
    pts = box_samples(seed, lo, hi, n)
    logits = np.asarray(jit_forward(net)(params, pts.reshape(-1, *lo.shape[1:]))).reshape(lo.shape[0], 2 * n, -1)
    margins = np.einsum("bsn,bkn->bsk", logits, np.asarray(C))
    for name, (lb, ub, logit_lb, logit_ub, *_) in bounds.items():
        for out, low, up in ((margins, lb, ub), (logits, logit_lb, logit_ub)):
            tol = 1e-4 * (1 + np.abs(out))
            low, up = np.asarray(low)[:, None], np.asarray(up)[:, None]
            assert np.all(out >= low - tol), f"{name}: sample below the lower bound by {np.max(low - out)}"
            assert np.all(out <= up + tol), f"{name}: sample above the upper bound by {np.max(out - up)}"


# --------------------------------------------------------------------------------------------- soundness


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_every_crown_variant_is_sound_with_and_without_spec(net, seed, eps):
    """All of CROWN_VARIANTS ("crown-given" with random per-neuron slopes), margins and logits."""
    _, params, lo, hi, C, bounds = family_bounds(net, seed, eps)
    for lb, ub, logit_lb, logit_ub, _ in bounds.values():
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in (lb, ub, logit_lb, logit_ub))
    assert_contains(net, params, lo, hi, C, bounds, seed)


def test_the_family_covers_every_registered_crown_name():
    from jaxcert.bounds import relaxation_names

    crown_names = {n for n in relaxation_names() if n in ("crown", "deeppoly") or n.startswith("crown-")}
    assert crown_names - {"crown-ibp", "crown-lee"} == set(CROWN_VARIANTS)


@functools.cache
def jit_relu_inputs(net: str):
    """Jitted ``(params, x) -> [input of each ReLU]`` and the interval bounds of the same layers."""
    arch, _ = net_arch(net)
    relus = relu_indices(arch)

    def inputs(params, x):
        out = []
        for i, (spec, p) in enumerate(zip(arch, params, strict=True)):
            out += [x] if i in relus else []
            x = spec.apply(p, x)
        return out

    def ibp(params, lo, hi):
        layers = interval_layers(arch, params, lo, hi)
        return [layers[i] for i in relus]

    return jax.jit(inputs), jax.jit(ibp)


@pytest.mark.slow
@pytest.mark.parametrize("net", NET_NAMES)
def test_intermediate_bounds_contain_activations_and_lie_inside_ibp(net):
    _, params, lo, hi, _, bounds = family_bounds(net, 5, 0.1)
    inputs, ibp = jit_relu_inputs(net)
    pts = box_samples(0, lo, hi, 64)  # (B, 128, *input)
    acts = inputs(params, np.swapaxes(pts, 0, 1).reshape(-1, *lo.shape[1:]))
    for k, ((ibp_l, ibp_u), h) in enumerate(zip(ibp(params, lo, hi), acts, strict=True)):
        h = np.asarray(h).reshape(-1, *ibp_l.shape)  # (128, B, *shape)
        for name, (*_, pre) in bounds.items():
            low, up = np.asarray(pre[k][0]), np.asarray(pre[k][1])
            assert np.all(h >= low - 1e-5) and np.all(h <= up + 1e-5), name
            assert np.all(low >= np.asarray(ibp_l) - 1e-6) and np.all(up <= np.asarray(ibp_u) + 1e-6), name


# --------------------------------------------------------------------------------- exact references


@pytest.mark.slow
@pytest.mark.parametrize(("net", "eps"), [("mlp", 0.08), ("bn", 0.08), ("one_layer", 0.1), ("conv", 0.015)])
def test_crown_variants_contain_the_exact_range_and_are_looser_than_the_lp(net, eps):
    """exact (MILP) ⊆ triangle LP with the variant's own pre-activation bounds ⊆ the variant's bounds."""
    arch, params, lo, hi, C, bounds = family_bounds(net, 1, eps)
    exact_lb, exact_ub = exact_bounds(arch, params, lo, hi, C)
    for name, (lb, ub, _, _, pre) in bounds.items():
        assert np.all(lb <= exact_lb + 1e-4), name
        assert np.all(ub >= exact_ub - 1e-4), name
        if net == "conv" and name != "crown":
            continue  # keep the LP count small on the larger net
        lp_lb, lp_ub = lp_bounds(arch, params, lo, hi, C, intermediate=pre)
        assert np.all(lp_lb >= lb - 1e-4), name  # CROWN is a feasible dual of this LP
        assert np.all(lp_ub <= ub + 1e-4), name
        assert np.all(lp_lb <= exact_lb + 1e-4) and np.all(lp_ub >= exact_ub - 1e-4), name


def test_crown_equals_the_exact_range_when_every_neuron_is_stable():
    arch, params, lo, hi, C, bounds = family_bounds("mlp", 2, 0.002)
    for low, up in bounds["crown"][-1]:
        assert not bool(jnp.any((low < 0) & (up > 0))), "pick a smaller eps: some neuron is unstable"
    exact_lb, exact_ub = exact_bounds(arch, params, lo, hi, C)
    for name, (lb, ub, *_) in bounds.items():
        np.testing.assert_allclose(lb, exact_lb, atol=2e-5, err_msg=name)
        np.testing.assert_allclose(ub, exact_ub, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("net", NET_NAMES)
def test_crown_is_exact_at_zero_eps(net):
    _, params, lo, _, C, bounds = family_bounds(net, 3, 0.0)
    logits = jit_forward(net)(params, lo)
    margins = jnp.einsum("bn,bkn->bk", logits, C)
    for name, (lb, ub, logit_lb, logit_ub, _) in bounds.items():
        for low, up, z in ((lb, ub, margins), (logit_lb, logit_ub, logits)):
            np.testing.assert_allclose(low, z, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(up, z, atol=1e-5, err_msg=name)


@functools.cache
def jit_ibp(net: str):
    """Jitted IBP bounds of the margins and of the logits."""
    arch, _ = net_arch(net)
    return jax.jit(lambda p, lo, hi, C: (ibp_bounds(arch, p, lo, hi, C), ibp_bounds(arch, p, lo, hi)))


@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_crown_zero_is_at_least_as_tight_as_ibp_with_one_relu_layer(seed, eps):
    """With one ReLU layer, slope-0 CROWN bounds each neuron's term as IBP does, but jointly over x."""
    _, params, lo, hi, C, bounds = family_bounds("one_layer", seed, eps)
    lb, ub, logit_lb, logit_ub, _ = bounds["crown-zero"]
    (ibp_lb, ibp_ub), (ibp_logit_lb, ibp_logit_ub) = jit_ibp("one_layer")(params, lo, hi, C)
    assert np.all(lb >= ibp_lb - 1e-5) and np.all(ub <= ibp_ub + 1e-5)
    assert np.all(logit_lb >= ibp_logit_lb - 1e-5) and np.all(logit_ub <= ibp_logit_ub + 1e-5)


def test_deeppoly_is_crown_and_given_slopes_reproduce_fixed_rules():
    from jaxcert.bounds.registry import _REGISTRY

    assert _REGISTRY["deeppoly"] == _REGISTRY["crown"]
    _, params, lo, hi, C, bounds = family_bounds("conv", 4, 0.1)
    # "crown-given" with all-one slopes is "crown-one"
    ones = [jnp.ones_like(s) for s in random_slopes("conv", 4)]
    given_one = crown_family("conv")(params, lo, hi, C, ones)["crown-given"]
    for a, b in zip(given_one[:4], bounds["crown-one"][:4], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ continuity


def sweep_net(bias: jax.Array):
    """x ∈ [-1, 1] -> z = (x + bias, x/2 + 0.3) -> ReLU -> logits (2 h_1, h_2): margin 2 h_1 - h_2.

    The first neuron has ``l = bias - 1``, ``u = bias + 1``: the min-area rule switches at bias = 0.
    """
    arch = (Dense(2), ReLU(), Dense(2))
    params = [
        {"kernel": jnp.array([[1.0, 0.5]]), "bias": jnp.stack([bias, jnp.asarray(0.3)])},
        {},
        {"kernel": jnp.array([[2.0, 0.0], [0.0, 1.0]]), "bias": jnp.zeros(2)},
    ]
    return arch, params


SWEEP_RULES = {"crown": True, "crown-parallel": False, "crown-soft": False}  # name -> jumps at u = -l


@functools.cache
def sweep_losses() -> dict[str, np.ndarray]:
    """Certified loss of each relaxation along biases in [-0.2, 0.2] (step 1e-3), through the switch at 0."""
    lo, hi, C = -jnp.ones((1, 1)), jnp.ones((1, 1)), margin_spec(jnp.array([0]), 2)

    def losses(bias):
        arch, params = sweep_net(bias)
        return {n: certified_cross_entropy(get_relaxation(n)(arch, params, lo, hi, C)[0])[0] for n in SWEEP_RULES}

    out = jax.jit(jax.vmap(losses))(jnp.linspace(-0.2, 0.2, 401))
    return {n: np.asarray(v) for n, v in out.items()}


@pytest.mark.parametrize(("name", "jumps"), SWEEP_RULES.items())
def test_certified_loss_jumps_at_u_equals_minus_l_only_for_the_min_area_rule(name, jumps):
    losses = sweep_losses()[name]
    fine_jump = np.max(np.abs(np.diff(losses)))  # step 1e-3
    coarse_jump = np.max(np.abs(np.diff(losses[::10])))  # step 1e-2
    if jumps:  # the jump does not shrink with the step: a discontinuity
        assert fine_jump > 0.3 and fine_jump > 0.5 * coarse_jump
    else:  # it shrinks like the step: continuous
        assert fine_jump < 0.2 * coarse_jump


# ------------------------------------------------------------------------------------ vmap and options


def test_crown_vmaps_over_parameter_samples_and_traced_options_like_a_loop():
    arch, params, lo, hi, C = example_box("conv", 6, 0.1)
    samples = [jax.tree_util.tree_map(lambda a, s=s: a * (1 + 0.1 * s), params) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *samples)
    gammas = jnp.array([0.5, 1.0, 4.0])
    fn = jax.jit(lambda p, g: get_relaxation("crown-soft")(arch, p, lo, hi, C, gamma=g))
    batched = jax.vmap(fn)(stacked, gammas)
    for s, p in enumerate(samples):
        lb, ub = fn(p, gammas[s])
        np.testing.assert_allclose(batched[0][s], lb, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(batched[1][s], ub, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_crown_is_differentiable_in_the_parameters():
    arch, params, lo, hi, C = example_box("bn", 7, 0.1)
    fn = get_relaxation("crown")
    grads = jax.jit(jax.grad(lambda p: jnp.sum(certified_cross_entropy(fn(arch, p, lo, hi, C)[0]))))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_bad_options_give_clear_errors():
    arch, params, lo, hi, C = example_box("mlp", 0, 0.1)
    crown, given_ = get_relaxation("crown"), get_relaxation("crown-given")

    def trace(fn, **options):  # errors are raised while tracing: no need to run anything
        return jax.eval_shape(lambda p: fn(arch, p, lo, hi, C, **options), params)

    with pytest.raises(ValueError, match="unknown option"):
        trace(crown, gama=1.0)
    with pytest.raises(ValueError, match="unknown lower-slope rule"):
        trace(crown, lower_slope="steep")
    with pytest.raises(ValueError, match="only used with lower_slope='given'"):
        trace(crown, lower_slopes=[jnp.zeros((3, 6)), jnp.zeros((3, 5))])
    with pytest.raises(ValueError, match="one array per ReLU layer"):
        trace(given_, lower_slopes=[jnp.zeros((3, 6))])
    with pytest.raises(ValueError, match="expected shape"):
        trace(given_, lower_slopes=[jnp.zeros((3, 5)), jnp.zeros((3, 5))])
    with pytest.raises(ValueError, match="tau"):
        trace(crown, lower_slope="zero-c", tau=2.0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):  # concrete values are checked eagerly
        given_(arch, params, lo, hi, C, lower_slopes=[jnp.full((3, 6), 1.5), jnp.zeros((3, 5))])
