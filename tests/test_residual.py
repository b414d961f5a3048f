"""The static layer graph: Add (residual) merges and AvgPool in the network and in every relaxation.

Soundness on sampled points and box vertices, tightness against the exact MILP and against an equivalent
chain net (a shortcut folded into the weights), the exact-interval prefixes with AvgPool, the errors of
the cases without support, the ONNX export and the residual architectures.
"""

import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bounds import UnsupportedLayerError, get_relaxation, input_box, margin_spec
from jaxcert.bounds.backsub import backsubstitute, two_sided_rows
from jaxcert.bounds.crown import crown_preactivation_bounds, make_line_fn, use_windows
from jaxcert.bounds.exact import dense_blocks, exact_bounds, graph_blocks
from jaxcert.bounds.ibp import interval_layers
from jaxcert.bounds.layer_rules import rule_for
from jaxcert.bounds.loss import cross_entropy
from jaxcert.bounds.loss_fusion import fused_loss_from_box
from jaxcert.bounds.spec import fold_spec
from jaxcert.nets import (
    Add,
    AvgPool,
    Conv,
    Dense,
    Flatten,
    Network,
    Normalize,
    ReLU,
    forward,
    get_architecture,
    init_params,
    params_of,
    plan_for,
    shapes,
)
from jaxcert.nets.graph import suffix
from jaxcert.train.methods.taps import split_arch, taps_margins
from tests.soundness import GRAPH_NET_NAMES, GRAPH_NETS, assert_sound, sample_box, tiny_params

#: Every relaxation with Add and AvgPool support, with the options that pick another code path.
SUPPORTING = [
    ("ibp", {}),
    ("crown", {}),
    ("crown", {"unstable_budget": 2}),
    ("crown", {"bound_upper": False}),
    ("crown-zero", {}),
    ("crown-one-c", {}),
    ("crown-given", {}),
    ("crown-ibp", {}),
    ("crown-ibp", {"beta": 0.5}),
    ("alpha-crown", {"steps": 3}),
    ("alpha-crown", {"steps": 3, "intermediate": "ibp"}),
    ("alpha-crown-full", {"steps": 3}),
    ("crown-lee", {}),
    ("deepz", {}),
    ("hbox", {}),
]

# ---------------------------------------------------------------------------------------------- the graph


def _hand_residual(params, x):
    """GRAPH_NETS["residual"] written out by hand."""
    p = params
    conv = lambda i, h: Conv(3, 3, 1, 1).apply(p[i], h)
    h0 = (x - jnp.array([0.2, 0.5])) / jnp.array([0.3, 0.6])
    a = jax.nn.relu(conv(1, h0))
    b = jax.nn.relu(conv(3, a))
    c = jax.nn.relu(conv(5, b) + a)
    pooled = (c[:, 0::2, 0::2] + c[:, 1::2, 0::2] + c[:, 0::2, 1::2] + c[:, 1::2, 1::2]) / 4
    d = jax.nn.relu(pooled.reshape(x.shape[0], -1) @ p[10]["kernel"] + p[10]["bias"])
    return d @ p[12]["kernel"] + p[12]["bias"]


def test_forward_equals_a_hand_written_residual_forward_and_the_nnx_module():
    arch, in_shape, params = tiny_params("residual", 0)
    x = jax.random.uniform(jax.random.key(1), (5, *in_shape))
    with jax.default_matmul_precision("highest"):
        expected = _hand_residual(params, x)
        np.testing.assert_allclose(forward(arch, params, x), expected, rtol=1e-5, atol=1e-6)
        model = Network(arch, in_shape, rngs=__import__("flax").nnx.Rngs(3))
        np.testing.assert_allclose(model(x), forward(arch, params_of(model), x), rtol=1e-5, atol=1e-6)
    # the shortcut matters: without it the output differs
    chain = tuple(ReLU() if isinstance(s, Add) else s for s in arch)
    assert not np.allclose(forward(chain, params, x), expected, atol=1e-3)


def test_plan_facts_and_build_time_errors():
    arch, in_shape = GRAPH_NETS["residual_mlp"]
    plan = plan_for(arch, in_shape)
    assert plan.skip_sources == {2: 5, 0: 6, 8: 10}
    assert plan.activations == (3, 7, 11) and plan.merges == (5, 6, 9, 10)
    assert plan.shapes == tuple(shapes(arch, in_shape))
    assert plan_for(list(arch), list(in_shape)) is plan  # cached per (arch, shape)
    with pytest.raises(ValueError, match=r"layer 2 .*source must be an earlier node"):
        plan_for((Flatten(), Dense(4), Add(source=2), Dense(3)), (4,))
    with pytest.raises(ValueError, match=r"node 1 of shape \(4,\) to node 2 of shape \(5,\)"):
        init_params((Flatten(), Dense(5), Add(source=1), Dense(3)), (4,))
    with pytest.raises(ValueError, match="source must be a layer index"):
        Add(source=-1)
    with pytest.raises(ValueError, match="no one-input apply"):
        Add(source=0).apply({}, jnp.zeros((1, 4)))


def test_a_driver_that_does_not_know_merges_raises_naming_add():
    with pytest.raises(UnsupportedLayerError, match=r"'Add'.*'interval'"):
        rule_for(Add(source=0), "interval", "some driver")


def test_suffix_shifts_sources_and_refuses_a_cut_inside_a_block():
    arch, _ = GRAPH_NETS["residual"]
    assert suffix(arch, 3)[3] == Add(source=0)  # the block's input is the suffix's input
    for cut in (4, 5, 6):
        with pytest.raises(ValueError, match=f"cut before layer {cut} falls inside a residual block: layer 6"):
            suffix(arch, cut)


# ------------------------------------------------------------------------------------------------ soundness


@pytest.mark.parametrize("net", GRAPH_NET_NAMES)
@pytest.mark.parametrize(("relaxation", "options"), SUPPORTING, ids=lambda v: str(v) if v else "")
def test_every_supporting_relaxation_is_sound_on_graph_nets(net, relaxation, options):
    assert_sound(relaxation, net, 0, 0.1, n_samples=128, **options)


@pytest.mark.parametrize("net", GRAPH_NET_NAMES)
def test_loss_fusion_bounds_the_cross_entropy_of_samples(net):
    arch, in_shape, params = tiny_params(net, 2)
    x = jax.random.uniform(jax.random.key(3), (3, *in_shape))
    y = jnp.array([0, 1, 2])
    lo, hi = input_box(x, 0.1)
    fused = fused_loss_from_box(arch, params, lo, hi, y).loss
    for b in range(3):
        ce = cross_entropy(forward(arch, params, sample_box(jax.random.key(b), lo[b], hi[b], 128)), y[b].repeat(256))
        assert float(jnp.max(ce)) <= float(fused[b]) + 1e-4


# ------------------------------------------------------------------------------------------------ tightness


def _box(net, seed, eps, batch=2):
    arch, in_shape, params = tiny_params(net, seed)
    x = np.random.default_rng(seed + 5).random((batch, *in_shape), dtype=np.float32)
    lo, hi = input_box(jnp.asarray(x), eps)
    return arch, params, lo, hi, margin_spec(jnp.arange(batch) % 3, 3)


@functools.cache
def _jitted(relaxation, options=()):
    fn = get_relaxation(relaxation)
    return jax.jit(lambda arch, params, lo, hi, C: fn(arch, params, lo, hi, C, **dict(options)), static_argnums=0)


@pytest.mark.slow
@pytest.mark.parametrize(("net", "eps", "batch"), [("residual", 0.02, 1), ("residual_mlp", 0.3, 2)])
def test_exact_within_alpha_within_crown_within_budgeted_within_ibp(net, eps, batch):
    arch, params, lo, hi, C = _box(net, 4, eps, batch)
    exact_lb, exact_ub = exact_bounds(arch, params, lo, hi, C)
    bounds = {
        name: _jitted(relaxation, tuple(options.items()))(arch, params, lo, hi, C)
        for name, relaxation, options in [
            ("ibp", "ibp", {}),
            ("budget", "crown", {"unstable_budget": 1}),
            ("crown", "crown", {}),
            ("alpha", "alpha-crown", {"steps": 5}),
            ("full", "alpha-crown-full", {"steps": 5}),
        ]
    }
    tol = 1e-4
    order = [(exact_lb, exact_ub), bounds["full"], bounds["alpha"], bounds["crown"], bounds["budget"], bounds["ibp"]]
    for (in_lb, in_ub), (out_lb, out_ub) in itertools.pairwise(order):
        assert np.all(np.asarray(in_lb) >= np.asarray(out_lb) - tol)
        assert np.all(np.asarray(in_ub) <= np.asarray(out_ub) + tol)
    width = lambda b: float(jnp.sum(b[1] - b[0]))
    assert width(bounds["crown"]) < width(bounds["ibp"]) - 1e-3, "pick a box where CROWN beats IBP"
    assert width(bounds["crown"]) < width(bounds["budget"]) - 1e-4, "pick a box where the budget binds"


def _chain_of_single_shortcut():
    """A residual net with one shortcut from a ReLU output and the chain net with ``W + I`` in its place."""
    residual = (Flatten(), Dense(5), ReLU(), Dense(5), Add(source=3), ReLU(), Dense(3))
    chain = (Flatten(), Dense(5), ReLU(), Dense(5), ReLU(), Dense(3))
    params = init_params(residual, (4,), seed=7)
    params = [{k: v + 0.1 * (k == "bias") for k, v in p.items()} for p in params]
    chain_params = [params[0], params[1], params[2], dict(params[3]), params[5], params[6]]
    chain_params[3]["kernel"] = params[3]["kernel"] + jnp.eye(5)
    return residual, params, chain, chain_params


def test_back_substitution_through_a_shortcut_equals_the_folded_chain():
    """Back-substitution is linear: through ``Add`` it must give what ``W + I`` gives, with the same lines."""
    residual, params, chain, chain_params = _chain_of_single_shortcut()
    lo, hi = input_box(jax.random.uniform(jax.random.key(0), (3, 4)), 0.3)
    body, body_params, W, b = fold_spec(chain, chain_params, margin_spec(jnp.array([0, 1, 2]), 3), 3)
    layers = interval_layers(body, body_params, lo, hi)
    line_fn = make_line_fn(body)
    lines = {2: line_fn(2, *layers[2]), 4: line_fn(4, *layers[4])}
    A, a = two_sided_rows(W, b)
    expected = backsubstitute(body, body_params, A, a, lines, lo, hi)
    res_body, res_params, _, _ = fold_spec(residual, params, margin_spec(jnp.array([0, 1, 2]), 3), 3)
    got = backsubstitute(res_body, res_params, A, a, {2: lines[2], 5: lines[4]}, lo, hi)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # and the exact range is the chain's
    C = margin_spec(jnp.array([0, 1, 2]), 3)
    np.testing.assert_allclose(
        exact_bounds(residual, params, lo, hi, C), exact_bounds(chain, chain_params, lo, hi, C), atol=1e-5
    )


def test_graph_blocks_reproduce_the_network_and_dense_blocks_refuse_merges():
    arch, params, lo, _, _ = _box("residual_mlp", 0, 0.0)
    blocks = graph_blocks(arch, params, lo.shape[1:])
    values = [np.asarray(lo, np.float64).reshape(lo.shape[0], -1)]
    for k, (terms, b) in enumerate(blocks):
        z = sum(values[g] @ W.T for g, W in terms.items()) + b
        values.append(np.maximum(z, 0) if k < len(blocks) - 1 else z)
    assert set(blocks[1][0]) == {0, 1}  # node 5 + node 0: reads the input and the first ReLU's output
    np.testing.assert_allclose(values[-1], forward(arch, params, lo), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Add merges"):
        dense_blocks(arch, params, lo.shape[1:])


# ------------------------------------------------------------------------------------ AvgPool, exact prefixes


def test_avg_pool_is_the_mean_of_its_windows_and_its_own_absolute_map():
    pool = AvgPool(2, 1)
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 2))
    y = pool.apply({}, x)
    assert y.shape == (2, *pool.out_shape((3, 4, 2))) == (2, 2, 3, 2)
    np.testing.assert_allclose(y[:, 1, 2], x[:, 1:3, 2:4].mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(pool.abs_linear({}, x), y)
    with pytest.raises(ValueError, match="larger than the input"):
        AvgPool(5).out_shape((4, 4, 1))


def test_exact_prefix_counts_avg_pool_as_mixing():
    """One positive linear map of a box is exact coordinate-wise (the interval's ends are attained at box
    vertices); a second mixing map (Conv then AvgPool) is not, and CROWN must then refine the bounds."""
    exact_net = (Normalize((0.3,), (0.4,)), AvgPool(2, 1), ReLU(), Flatten(), Dense(3))
    mixed_net = (Normalize((0.3,), (0.4,)), Conv(2, 2, 1, 1), AvgPool(2, 1), ReLU(), Flatten(), Dense(3))
    assert 2 in plan_for(exact_net, (4, 4, 1)).exact_nodes
    assert 3 not in plan_for(mixed_net, (4, 4, 1)).exact_nodes and 2 in plan_for(mixed_net, (4, 4, 1)).exact_nodes
    lo, hi = input_box(jax.random.uniform(jax.random.key(0), (2, 4, 4, 1)), 0.1)
    params = init_params(exact_net, (4, 4, 1))
    z_lo, z_hi = interval_layers(exact_net, params, lo, hi)[2]
    # AvgPool's weights are positive: the upper end is attained at the upper vertex, the lower at the lower one
    np.testing.assert_allclose(z_hi, forward(exact_net[:2], params[:2], hi), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z_lo, forward(exact_net[:2], params[:2], lo), rtol=1e-5, atol=1e-6)
    params = init_params(mixed_net, (4, 4, 1), seed=2)
    ((c_lo, c_hi),) = crown_preactivation_bounds(mixed_net, params, lo, hi)
    i_lo, i_hi = interval_layers(mixed_net, params, lo, hi)[3]
    assert np.all(c_lo >= i_lo - 1e-6) and np.all(c_hi <= i_hi + 1e-6)
    assert float(jnp.sum(i_hi - i_lo) - jnp.sum(c_hi - c_lo)) > 1e-3  # refined: tighter than interval


def test_box_prefix_stops_where_the_input_box_still_maps_onto_a_box():
    """Coordinate-wise maps and a disjoint AvgPool send the input box onto a box; overlapping windows, a
    mixing map before the pool, or a shortcut reading a node inside the prefix end it."""
    assert not AvgPool(2, 1).onto_boxes and AvgPool(2).onto_boxes and AvgPool(2, 3).onto_boxes
    assert not Dense(3).onto_boxes and not Conv(2, 2, 2, 0).onto_boxes and Flatten().onto_boxes
    mlp = get_architecture("mlp_14x14")
    plan = plan_for(mlp, (28, 28, 1))
    assert plan.box_prefix == 3 and 4 in plan.exact_nodes and 6 not in plan.exact_nodes
    overlapping = (Normalize((0.3,), (0.4,)), AvgPool(2, 1), Flatten(), Dense(3), ReLU(), Dense(2))
    assert plan_for(overlapping, (4, 4, 1)).box_prefix == 1
    after_conv = (Normalize((0.3,), (0.4,)), Conv(2, 2, 1, 1), AvgPool(2), ReLU(), Flatten(), Dense(3))
    assert plan_for(after_conv, (4, 4, 1)).box_prefix == 1 and 3 not in plan_for(after_conv, (4, 4, 1)).exact_nodes
    read_inside = (Normalize((0.3,), (0.4,)), Flatten(), Dense(4), ReLU(), Add(source=1), Dense(2))
    assert plan_for(read_inside[:4], (4,)).box_prefix == 2 and plan_for(read_inside, (4,)).box_prefix == 1


@pytest.mark.parametrize("relaxation, options", [("crown", {}), ("crown-ibp", {}), ("alpha-crown-full", {"steps": 3}),
                                                 ("crown", {"bound_upper": False})])  # fmt: skip
def test_stopping_at_the_pooled_box_gives_the_bounds_of_the_whole_back_substitution(relaxation, options):
    """The same net with its 2×2 AvgPool written as a Conv (kernel 1/4, stride 2: a mixing map that does not
    claim to map boxes onto boxes) back-substitutes to the 6×6 input and bounds its first layer by a CROWN
    pass; stopping at the 3×3 pooled box (interval arithmetic there) must give the same bounds: as tight,
    and sound on samples."""
    body = (Flatten(), Dense(6), ReLU(), Dense(5), ReLU(), Dense(3))
    pooled = (Normalize((0.3,), (0.4,)), AvgPool(2), *body)
    as_conv = (Normalize((0.3,), (0.4,)), Conv(1, 2, 2, 0), *body)
    params = init_params(pooled, (6, 6, 1), seed=3)
    conv_params = [params[0], {"kernel": jnp.full((2, 2, 1, 1), 0.25), "bias": jnp.zeros(1)}, *params[2:]]
    np.testing.assert_allclose(forward(as_conv, conv_params, jnp.ones((1, 6, 6, 1))),
                               forward(pooled, params, jnp.ones((1, 6, 6, 1))), rtol=1e-6)  # fmt: skip
    assert plan_for(pooled, (6, 6, 1)).box_prefix == 3 and plan_for(as_conv, (6, 6, 1)).box_prefix == 1
    x = jax.random.uniform(jax.random.key(1), (4, 6, 6, 1))
    lo, hi = input_box(x, 0.15)
    C = margin_spec(jnp.arange(4) % 3, 3)
    bound = get_relaxation(relaxation)
    lb, ub = bound(pooled, params, lo, hi, C, **options)
    lb_conv, ub_conv = bound(as_conv, conv_params, lo, hi, C, **options)
    np.testing.assert_allclose(lb, lb_conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ub, ub_conv, rtol=1e-5, atol=1e-5)
    points = sample_box(jax.random.key(2), lo, hi, 128)
    margins = jnp.einsum("bkh,nbh->nbk", C, jax.vmap(lambda z: forward(pooled, params, z))(points))
    assert np.all(margins >= lb[None] - 1e-5)


# ------------------------------------------------------------------------------------------- unsupported cases


@pytest.mark.parametrize("relaxation", ["crown", "alpha-crown", "alpha-crown-full"])
def test_explicit_patches_on_a_net_with_add_is_a_one_line_error(relaxation):
    arch, params, lo, hi, C = _box("residual", 0, 0.05)
    with pytest.raises(UnsupportedLayerError, match=f"relaxation '{relaxation}'.*'Add'.*'window'") as err:
        get_relaxation(relaxation)(arch, params, lo, hi, C, patches=True)
    assert "\n" not in str(err.value)


def test_auto_patches_chooses_dense_rows_on_a_net_with_add():
    arch, params, lo, hi, C = _box("residual", 1, 0.05)
    body = arch[:7]  # the pre-activation of the ReLU after the Add: convolutions only, but an Add
    assert not use_windows(body, lo.shape[1:], "auto")
    auto = _jitted("crown", (("patches", "auto"),))(arch, params, lo, hi, C)
    dense = _jitted("crown", (("patches", False),))(arch, params, lo, hi, C)
    np.testing.assert_allclose(auto, dense, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------- TAPS


def test_taps_split_inside_a_residual_block_is_a_one_line_error():
    arch, in_shape, params = tiny_params("residual", 0)
    with pytest.raises(ValueError, match=r"^taps_split 5: the cut before layer 5 falls inside a residual block"):
        split_arch(arch, 5)
    k, head = split_arch(arch, 8)  # after the block
    assert k == 8 and head == arch[8:]
    lo, hi = input_box(jax.random.uniform(jax.random.key(0), (2, *in_shape)), 0.05)
    margins = taps_margins(arch, params, lo, hi, jnp.array([0, 1]), jax.random.key(1), split=3, steps=2)
    assert margins.shape == (2, 2) and bool(jnp.all(jnp.isfinite(margins)))


# --------------------------------------------------------------------------------------------------- export


@pytest.mark.slow
def test_onnx_export_of_residual_nets_equals_forward():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from jaxcert.export import to_onnx

    image_skip = (Conv(3, 3, 1, 1), ReLU(), Conv(2, 3, 1, 1), Add(source=0), AvgPool(2), Flatten(), Dense(3))
    for arch, in_shape in [GRAPH_NETS["residual"], GRAPH_NETS["residual_mlp"], (image_skip, (5, 4, 2))]:
        params = init_params(arch, in_shape, seed=1)
        params = [{k: v + 0.1 for k, v in p.items()} for p in params]
        x = np.random.default_rng(2).uniform(size=(4, *in_shape)).astype(np.float32)
        session = ort.InferenceSession(to_onnx(arch, params, in_shape).SerializeToString())
        with jax.default_matmul_precision("highest"):
            np.testing.assert_allclose(
                session.run(None, {"input": x})[0], forward(arch, params, x), rtol=1e-5, atol=1e-5
            )


# ------------------------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize(
    ("dataset", "in_shape", "features"), [("fashion_mnist", (28, 28, 1), 1568), ("cifar10", (32, 32, 3), 2048)]
)
def test_residual_architectures_fit_both_data_sets(dataset, in_shape, features):
    arch = get_architecture("resnet_small", 10, dataset)
    plan = plan_for(arch, in_shape)
    assert len(plan.merges) == 2 and plan.shapes[-4] == (features,) and plan.shapes[-1] == (10,)
    tiny = get_architecture("resnet_tiny", 10, dataset)
    plan = plan_for(tiny, in_shape)
    assert sum(int(np.prod(plan.shapes[i])) for i in plan.activations) <= 300  # small enough for the MILP
    x = jnp.zeros((2, *in_shape))
    assert forward(tiny, init_params(tiny, in_shape), x).shape == (2, 10)


# ------------------------------------------------------------------------------------------ the command lines


def test_a_taps_split_inside_a_residual_block_stops_the_training_command_before_any_work(tmp_path, capsys):
    from jaxcert.train.__main__ import main

    out = tmp_path / "run"
    argv = ["--config", "tiny", "--arch", "resnet_tiny", "--method", "taps", "--taps-split", "5", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "taps_split 5: the cut before layer 5 falls inside a residual block" in err
    assert not out.exists()


@pytest.mark.slow
def test_a_residual_net_trains_certifies_and_exports_from_the_command_lines(tmp_path):
    """CROWN-IBP training of resnet_tiny for a few steps, the certification cascade with the MILP, the export."""
    from jaxcert.certify import main as certify_main
    from jaxcert.data.load import load_dataset
    from jaxcert.train.__main__ import main

    try:
        load_dataset("fashion_mnist", "test", limit=1)
    except (FileNotFoundError, ValueError) as err:
        pytest.skip(f"needs offline Fashion-MNIST: {err}")
    out = tmp_path / "run"
    argv = ["--config", "tiny", "--dataset", "fashion_mnist", "--arch", "resnet_tiny", "--relaxation", "crown-ibp",
            "--steps", "4", "--log-every", "2", "--checkpoint-every", "4", "--batch-size", "16", "--train-limit", "64",
            "--eps", "0.02", "--warmup-frac", "0", "--ramp-frac", "0", "--no-progress", "--no-eval",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and all(np.isfinite(losses))
    relaxations = "ibp,crown-ibp,crown,alpha-crown"
    assert certify_main([str(out), "--limit", "4", "--relaxations", relaxations, "--milp", "--no-progress"]) == 0
    report = json.loads(next(out.glob("certify-*.json")).read_text())
    assert report["settings"]["relaxations"] == relaxations.split(",")
    pytest.importorskip("onnx")
    from jaxcert.export import main as export_main

    assert export_main([str(out), "--examples", "1"]) == 0 and (out / "export" / "model.onnx").is_file()
