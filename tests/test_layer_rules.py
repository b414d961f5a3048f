"""The layer-kind protocol: a non-affine layer kind without the rule a relaxation needs raises a clear
error at trace time, never falls back to ReLU's relaxation (issue 18).

Two test-only kinds that ``forward`` evaluates: a leaky ReLU (a plain LayerSpec subclass) and a
subclass of ReLU with another ``apply`` (``isinstance(spec, ReLU)`` is True for it, so any dispatch on
``isinstance`` instead of the exact kind would relax it as a ReLU). Every registered relaxation and
every helper that bounds or encodes a network (exact MILP/LP, ONNX export, neuron-status analysis) must
reject both, naming the kind.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.analysis.unstable import unstable_counts
from jaxcert.bounds import UnsupportedLayerError, get_relaxation, input_box, layer_rules, margin_spec, relaxation_names
from jaxcert.bounds.backsub import backsubstitute, two_sided_rows
from jaxcert.bounds.crown import crown_intermediate, crown_preactivation_bounds, make_line_fn, use_windows
from jaxcert.bounds.crown_ibp import ibp_preactivation_bounds
from jaxcert.bounds.deepz import deepz_bounds
from jaxcert.bounds.exact import exact_bounds, exact_margin_check, lp_bounds
from jaxcert.bounds.hbox import hbox_bounds
from jaxcert.bounds.ibp import interval_layers
from jaxcert.bounds.loss_fusion import fused_certified_loss
from jaxcert.bounds.patches import backsubstitute_windows, supports_windows
from jaxcert.bounds.relu_slopes import relu_lines
from jaxcert.export import to_onnx
from jaxcert.nets import Conv, Dense, Flatten, LayerSpec, ReLU, forward, init_params
from jaxcert.nets.layers import Params


@dataclasses.dataclass(frozen=True)
class LeakyReLUForTests(LayerSpec):
    """max(x, a x): a non-affine kind no relaxation has rules for."""

    slope: float = 0.1
    is_affine: bool = dataclasses.field(default=False, init=False)

    def apply(self, p: Params, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.slope * x)


@dataclasses.dataclass(frozen=True)
class AbsSubclassOfReLU(ReLU):
    """|x|, disguised as a ReLU subclass: relaxed as a ReLU it would get unsound bounds."""

    def apply(self, p: Params, x: jax.Array) -> jax.Array:
        return jnp.abs(x)


KINDS = [LeakyReLUForTests, AbsSubclassOfReLU]


def dense_net(kind: type[LayerSpec]) -> tuple[tuple[LayerSpec, ...], tuple[int, ...]]:
    """The new kind after a ReLU layer (so CROWN reaches it in an intermediate pass too)."""
    return (Flatten(), Dense(5), ReLU(), Dense(4), kind(), Dense(3)), (4,)


def conv_net(kind: type[LayerSpec]) -> tuple[tuple[LayerSpec, ...], tuple[int, ...]]:
    return (Conv(2, 3, 1, 1), ReLU(), Conv(2, 3, 1, 1), kind(), Flatten(), Dense(3)), (5, 5, 1)


NETS = {"dense": dense_net, "conv": conv_net}


def case(kind: type[LayerSpec], net: str = "dense", seed: int = 0):
    arch, in_shape = NETS[net](kind)
    params = init_params(arch, in_shape, seed=seed)
    x = jnp.asarray(np.random.default_rng(seed).random((2, *in_shape)), jnp.float32)
    lo, hi = input_box(x, 0.1)
    return arch, params, x, lo, hi, margin_spec(jnp.array([0, 1]), 3)


def names_kind(kind: type[LayerSpec]) -> str:
    return rf"layer kind '{kind.__name__}'"


@pytest.mark.parametrize("kind", KINDS)
def test_the_test_kinds_are_evaluable_and_differ_from_relu(kind):
    arch, params, x, *_ = case(kind)
    relu_arch = tuple(ReLU() if isinstance(s, kind) else s for s in arch)
    out, relu_out = forward(arch, params, x), forward(relu_arch, params, x)
    assert out.shape == (2, 3) and bool(jnp.all(jnp.isfinite(out)))
    assert not np.allclose(out, relu_out)  # so a ReLU relaxation of this kind would bound the wrong function


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", relaxation_names())
def test_every_relaxation_rejects_a_kind_without_rules_at_trace_time(name, kind, net):
    arch, params, _, lo, hi, C = case(kind, net)
    fn = get_relaxation(name)
    message = rf"relaxation '{name}' has no rule for {names_kind(kind)}"
    with pytest.raises(UnsupportedLayerError, match=message):
        fn(arch, params, lo, hi, C)
    with pytest.raises(UnsupportedLayerError, match=message):  # raised while tracing, before any value
        jax.jit(lambda p: fn(arch, p, lo, hi, C))(params)


@pytest.mark.parametrize("kind", KINDS)
def test_patches_mode_rejects_a_kind_without_rules(kind):
    arch, params, _, lo, hi, C = case(kind, "conv")
    assert not supports_windows(arch[:4], lo.shape[1:])  # no "window" rule: no windows through it
    for budget in (None, 1):
        with pytest.raises(UnsupportedLayerError, match=names_kind(kind)):
            get_relaxation("crown")(arch, params, lo, hi, C, patches=True, unstable_budget=budget)


def relu_line_fn(i, lower, upper):
    """ReLU's lines for every layer: what a driver that skipped the lookup would use."""
    return relu_lines(lower, upper)


@pytest.mark.parametrize("kind", KINDS)
def test_the_engines_reject_the_kind_even_when_handed_relu_relaxations(kind):
    """Each engine looks up the rule itself, also when the caller bypassed :func:`make_line_fn`."""
    arch, params, _, lo, hi, _ = case(kind)
    bounds = {i: (lo_, hi_) for i, (lo_, hi_) in enumerate(interval_layers(arch[:4], params[:4], lo, hi))}
    lines = {2: relu_lines(*bounds[2]), 4: relu_lines(*bounds[4])}
    A, a = two_sided_rows(jnp.broadcast_to(params[5]["kernel"], (2, 4, 3)), jnp.zeros((2, 3)))
    with pytest.raises(UnsupportedLayerError, match=names_kind(kind) + ".*'backward'"):
        backsubstitute(arch[:5], params[:5], A, a, lines, lo, hi)
    with pytest.raises(UnsupportedLayerError, match=names_kind(kind) + ".*'interval'"):
        crown_intermediate(arch, params, lo, hi, relu_line_fn)
    with pytest.raises(UnsupportedLayerError, match=names_kind(kind) + ".*'lines'"):
        make_line_fn(arch)


@pytest.mark.parametrize("kind", KINDS)
def test_the_window_engine_rejects_the_kind(kind):
    arch, params, _, lo, hi, _ = case(kind, "conv")
    pre = interval_layers(arch[:3], params[:3], lo, hi)[3]
    lines = {1: relu_lines(*interval_layers(arch[:1], params[:1], lo, hi)[1]), 3: relu_lines(*pre)}
    A = jnp.ones((1, 1, 1, 1, 1, 2))  # one row on the 1x1 window of neuron (0, 0) of the kind's output
    pos = jnp.zeros((1, 1), jnp.int32)
    with pytest.raises(UnsupportedLayerError, match=names_kind(kind) + ".*'window'"):
        backsubstitute_windows(arch[:4], params[:4], A, jnp.zeros((1, 1, 1)), pos, pos, lines, lo, hi)


@pytest.mark.parametrize("kind", KINDS)
def test_helpers_that_bound_or_encode_reject_the_kind(kind):
    arch, params, x, lo, hi, C = case(kind)
    match = names_kind(kind)
    calls = {
        "interval_layers": lambda: interval_layers(arch, params, lo, hi),
        "ibp_preactivation_bounds": lambda: ibp_preactivation_bounds(arch, params, lo, hi),
        "crown_preactivation_bounds": lambda: crown_preactivation_bounds(arch, params, lo, hi),
        "deepz_bounds": lambda: deepz_bounds(arch, params, lo, hi, C),
        "hbox_bounds": lambda: hbox_bounds(arch, params, lo, hi, C),
        "fused_certified_loss": lambda: fused_certified_loss(arch, params, x, jnp.array([0, 1]), 0.1),
        "unstable_counts (ibp)": lambda: unstable_counts(arch, params, x, 0.1),
        "unstable_counts (crown)": lambda: unstable_counts(arch, params, x, 0.1, relaxation="crown"),
        "exact_bounds": lambda: exact_bounds(arch, params, lo, hi, C),
        "lp_bounds": lambda: lp_bounds(arch, params, lo, hi, C),
        "exact_margin_check": lambda: exact_margin_check(
            arch, params, np.asarray(lo[0]), np.asarray(hi[0]), np.asarray(C[0])
        ),
        "to_onnx": lambda: to_onnx(arch, params, (4,)),
    }
    for what, call in calls.items():
        with pytest.raises(UnsupportedLayerError, match=match):
            call()
        assert what  # (named for the traceback)


def test_relu_provides_every_rule_and_lookups_check_their_arguments():
    assert set(layer_rules.RULES[ReLU]) == set(layer_rules.RULE_NAMES)
    assert layer_rules.rule_for(ReLU(), "interval", "test") is layer_rules.relu_rules.relu_interval
    with pytest.raises(ValueError, match="affine"):
        layer_rules.rule_for(Dense(3), "interval", "test")
    with pytest.raises(ValueError, match="unknown rule name 'sigmoid'"):
        layer_rules.rule_for(ReLU(), "sigmoid", "test")
    err = UnsupportedLayerError("Kind", "deepz", "deepz_bounds").for_relaxation("deepz")
    assert "relaxation 'deepz' has no rule for layer kind 'Kind'" in str(err) and "'deepz' rule" in str(err)


#: One consumer per rule: dropping the rule from ReLU's entry must make it raise, naming the rule.
CONSUMERS = {
    "interval": lambda arch, params, x, lo, hi, C: get_relaxation("ibp")(arch, params, lo, hi, C),
    "lines": lambda arch, params, x, lo, hi, C: get_relaxation("crown-ibp")(arch, params, lo, hi, C),
    "slopes": lambda arch, params, x, lo, hi, C: get_relaxation("alpha-crown")(arch, params, lo, hi, C, steps=1),
    "backward": lambda arch, params, x, lo, hi, C: get_relaxation("crown-ibp")(arch, params, lo, hi, C),
    "deepz": lambda arch, params, x, lo, hi, C: get_relaxation("deepz")(arch, params, lo, hi, C),
    "hbox": lambda arch, params, x, lo, hi, C: get_relaxation("hbox")(arch, params, lo, hi, C),
    "milp": lambda arch, params, x, lo, hi, C: lp_bounds(arch, params, lo, hi, C),
    "onnx": lambda arch, params, x, lo, hi, C: to_onnx(arch, params, (4,)),
}


@pytest.mark.parametrize("rule", sorted(CONSUMERS))
def test_the_drivers_take_relu_rules_from_the_table(rule, monkeypatch):
    """With one rule removed from ReLU's entry, a plain ReLU net raises where that rule is needed."""
    arch, params, x, lo, hi, C = case(ReLU)
    CONSUMERS[rule](arch, params, x, lo, hi, C)  # fine with the full table
    entry = {k: v for k, v in layer_rules.RULES[ReLU].items() if k != rule}
    monkeypatch.setitem(layer_rules.RULES, ReLU, entry)
    with pytest.raises(UnsupportedLayerError, match=rf"layer kind 'ReLU' \(needs its '{rule}' rule"):
        CONSUMERS[rule](arch, params, x, lo, hi, C)


@pytest.mark.slow
def test_without_a_window_rule_crown_takes_the_dense_path_with_the_same_bounds(monkeypatch):
    arch, params, _, lo, hi, C = case(ReLU, "conv")
    assert use_windows(arch[:3], lo.shape[1:], True)
    windowed = get_relaxation("crown")(arch, params, lo, hi, C, patches=True)
    entry = {k: v for k, v in layer_rules.RULES[ReLU].items() if k != "window"}
    monkeypatch.setitem(layer_rules.RULES, ReLU, entry)
    assert not use_windows(arch[:3], lo.shape[1:], True)
    dense = get_relaxation("crown")(arch, params, lo, hi, C, patches=True)
    np.testing.assert_allclose(np.stack(windowed), np.stack(dense), rtol=1e-5, atol=1e-5)
