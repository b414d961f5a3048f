"""Branch and bound (jaxcert.bab): the CROWN split hook, split-domain soundness, the leaf LP, verdicts
against the exact MILP, a case only branch and bound certifies, and the certify stage and its CLI flags."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.bab import BabOptions, check_bab_options
from jaxcert.bab.bound import jitted_bound_domains
from jaxcert.bab.domains import Domains, children, pad_rows, root
from jaxcert.bab.layout import split_layout, total_neurons, unflatten
from jaxcert.bab.linear_leaf import solve_leaf
from jaxcert.bab.search import Bounder, bab_example
from jaxcert.bab.stage import margin_rows
from jaxcert.bounds import margin_lower_bounds
from jaxcert.bounds.crown import crown_intermediate, make_line_fn
from jaxcert.bounds.exact import exact_margin_check
from jaxcert.bounds.spec import fold_spec
from jaxcert.certify import certify_dataset, main
from jaxcert.nets import Dense, LeakyReLU, ReLU, forward, init_params
from jaxcert.nets.architectures import mlp
from tests.soundness import NET_NAMES, sample_box, tiny_params

TOL = 1e-5


def xor_net():
    """Margin ``1.5 - (|x1+x2| + |x1-x2|)/2 = 1.5 - max(|x1|, |x2|)`` of label 0 on the box [-1, 1]²: exact
    minimum 0.5 (at the corners). The four crossing neurons' upper chords (z ∈ [-2, 2]) only give
    ``Σ h ≤ 4``, i.e. ``-0.5``, whatever the lower slopes: (alpha-)CROWN cannot certify it; branch and
    bound can (every leaf with all four neurons fixed is linear, with minimum 0.5 over the box)."""
    arch = (Dense(4), ReLU(), Dense(2))
    kernel = jnp.array([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])
    out = jnp.stack([jnp.full(4, -0.5), jnp.zeros(4)], axis=1)
    params = [{"kernel": kernel, "bias": jnp.zeros(4)}, {}, {"kernel": out, "bias": jnp.array([1.5, 0.0])}]
    return arch, params, -np.ones(2, np.float32), np.ones(2, np.float32)


def body_bounds(arch, params, lo, hi, C, splits=None):
    body, body_params, _, _ = fold_spec(arch, params, C, lo.shape[0])
    bounds, _, _ = crown_intermediate(body, body_params, lo, hi, make_line_fn(body), splits=splits)
    return body, bounds


# --- the hook in CROWN --------------------------------------------------------------------------------


@pytest.mark.parametrize("net", NET_NAMES)
def test_the_split_hook_with_no_splits_equals_plain_crown(net):
    arch, in_shape, params = tiny_params(net, 3)
    x = np.random.default_rng(0).random((2, *in_shape), dtype=np.float32)
    lo, hi = jnp.asarray(x - 0.2), jnp.asarray(x + 0.2)
    body, plain = body_bounds(arch, params, lo, hi, None)
    layout = split_layout(body, in_shape)
    zeros = unflatten(jnp.zeros((2, total_neurons(layout)), jnp.int8), layout)
    _, hooked = body_bounds(arch, params, lo, hi, None, zeros)
    assert plain.keys() == hooked.keys() and len(plain) == 2
    for i in plain:
        np.testing.assert_array_equal(plain[i][0], hooked[i][0])
        np.testing.assert_array_equal(plain[i][1], hooked[i][1])


def test_a_split_clamps_its_neuron_and_tightens_the_later_layers():
    arch, in_shape, params = tiny_params("mlp", 5)
    x = np.random.default_rng(1).random((1, *in_shape), dtype=np.float32)
    lo, hi = jnp.asarray(x - 0.3), jnp.asarray(x + 0.3)
    body, root = body_bounds(arch, params, lo, hi, None)
    layout = split_layout(body, in_shape)
    first, second = layout
    l0, u0 = (np.asarray(t)[0] for t in root[first.index])
    j = int(np.flatnonzero((l0 < 0) & (u0 > 0))[0])
    for sign in (1, -1):
        split = np.zeros((1, total_neurons(layout)), np.int8)
        split[0, first.offset + j] = sign
        _, bounds = body_bounds(arch, params, lo, hi, None, unflatten(jnp.asarray(split), layout))
        lj, uj = (float(np.asarray(t)[0, j]) for t in bounds[first.index])
        assert (lj, uj) == ((0.0, u0[j]) if sign == 1 else (l0[j], 0.0))
        l1, u1 = (np.asarray(t) for t in bounds[second.index])
        r1, s1 = (np.asarray(t) for t in root[second.index])
        # CROWN is not monotone in the intermediate bounds (the min-area slope may switch), so a single
        # neuron may loosen; the layer as a whole tightens
        assert np.sum(u1 - l1) < np.sum(s1 - r1) - 1e-3


@functools.cache
def _tiny_bounder(net: str, seed: int, batch: int):
    arch, in_shape, params = tiny_params(net, seed)
    return arch, in_shape, params, Bounder(arch, params, in_shape, 3, BabOptions(batch=batch, attack_steps=0))


@pytest.mark.parametrize("net", NET_NAMES)
def test_split_domain_bounds_contain_every_sampled_point_that_satisfies_the_splits(net):
    arch, in_shape, params, bounder = _tiny_bounder(net, 7, 8)
    rng = np.random.default_rng(2)
    x = rng.random(in_shape, dtype=np.float32)
    lo, hi = x - 0.25, x + 0.25
    C = margin_rows(0, 3)
    points = np.asarray(sample_box(jax.random.key(0), jnp.asarray(lo), jnp.asarray(hi), 2000))
    pre = _preactivations(arch, params, points)  # (P, N)
    # splits of 1-3 neurons each, taken from the phases of a sampled point (so the domain is not empty)
    splits = np.zeros((8, bounder.neurons), np.int8)
    for d in range(8):
        chosen = rng.choice(bounder.neurons, size=1 + d % 3, replace=False)
        splits[d, chosen] = np.where(pre[d, chosen] >= 0, 1, -1)
    out = bounder.bound(lo, hi, C, 0, splits)
    margins = np.asarray(forward(arch, params, points))
    rows = margins @ C.T  # (P, K)
    checked = 0
    for d in range(8):
        inside = np.all((splits[d] == 0) | (np.sign(pre) == splits[d]) | (pre == 0), axis=1)
        assert inside[d] and not out.empty[d]
        assert np.all(rows[inside] >= out.lower[d] - TOL), (net, d)
        checked += int(inside.sum())
    assert checked > 100


def _bound_inheriting(bounder, lo, hi, C, y, domains):
    """The batch program on ``domains`` (padded), and the same domains carrying the bounds just computed
    (what their children inherit), both cut to ``domains.size`` rows."""
    out = bounder.bound(lo, hi, C, y, pad_rows(domains, bounder.options.batch))
    k = domains.size
    return out, Domains(domains.splits, out.pre_lower[:k], out.pre_upper[:k], out.lower[:k])


@pytest.mark.parametrize("net", NET_NAMES)
def test_children_are_never_looser_than_their_parent_and_from_scratch_ones_can_be(net):
    _, in_shape, _, bounder = _tiny_bounder(net, 7, 8)
    rng = np.random.default_rng(0)
    C = margin_rows(0, 3)
    scratch_looser = 0
    for _ in range(6):
        x = rng.random(in_shape, dtype=np.float32)
        lo, hi = x - 0.3, x + 0.3
        out, parent = _bound_inheriting(bounder, lo, hi, C, 0, root(bounder.neurons, 2))
        for _level in range(2):  # children, then grandchildren (of the first child)
            kids = children(parent, out.choice[:1])
            inherited, kept = _bound_inheriting(bounder, lo, hi, C, 0, kids)
            scratch = bounder.bound(lo, hi, C, 0, pad_rows(kids, 8).splits)  # bare splits: nothing inherited
            assert np.all(inherited.pre_lower[:2] >= parent.pre_lower)
            assert np.all(inherited.pre_upper[:2] <= parent.pre_upper)
            assert np.all(inherited.lower[:2] >= parent.rows)
            scratch_looser += int(np.sum(scratch.pre_lower[:2] < parent.pre_lower - 1e-6))
            scratch_looser += int(np.sum(scratch.pre_upper[:2] > parent.pre_upper + 1e-6))
            scratch_looser += int(np.sum(scratch.lower[:2] < parent.rows - 1e-6))
            if inherited.empty[0]:
                break
            out, parent = inherited, kept.take(np.array([0]))
    # CROWN re-run on a child is not monotone (the min-area slopes switch): from scratch, some bound of a
    # child is looser than its parent's on each of these nets; inherited, none is
    assert scratch_looser > 0


@pytest.mark.parametrize("net", NET_NAMES)
def test_inherited_bounds_contain_every_sampled_point_three_splits_deep(net):
    arch, in_shape, params, bounder = _tiny_bounder(net, 7, 8)
    rng = np.random.default_rng(3)
    x = rng.random(in_shape, dtype=np.float32)
    lo, hi = x - 0.25, x + 0.25
    C = margin_rows(0, 3)
    points = np.asarray(sample_box(jax.random.key(1), jnp.asarray(lo), jnp.asarray(hi), 2000))
    pre = _preactivations(arch, params, points)  # (P, N)
    rows = np.asarray(forward(arch, params, points)) @ C.T  # (P, K)
    witness = pre[0]  # the domains follow this point's phases, so none is empty
    out, domain = _bound_inheriting(bounder, lo, hi, C, 0, root(bounder.neurons, 2))
    choice = out.choice[:1]
    for depth in range(3):
        pick = 0 if witness[choice[0]] >= 0 else 1  # children(): the active child first
        out, kept = _bound_inheriting(bounder, lo, hi, C, 0, children(domain, choice))
        domain, choice = kept.take(np.array([pick])), out.choice[pick : pick + 1]
        inside = np.all((domain.splits == 0) | (np.sign(pre) == domain.splits) | (pre == 0), axis=1)
        assert inside[0] and not out.empty[pick] and inside.sum() > 20, (net, depth)
        assert np.all(pre[inside] >= domain.pre_lower - TOL) and np.all(pre[inside] <= domain.pre_upper + TOL)
        assert np.all(rows[inside] >= domain.rows - TOL), (net, depth)


def _preactivations(arch, params, points):
    h, pre = jnp.asarray(points), []
    for spec, p in zip(arch, params, strict=True):
        if not spec.is_affine:
            pre.append(np.asarray(h).reshape(h.shape[0], -1))
        h = spec.apply(p, h)
    return np.concatenate(pre, axis=1)


def test_branch_and_bound_splits_relu_layers_only():
    arch = (Dense(4), LeakyReLU(0.1), Dense(2))
    with pytest.raises(ValueError, match=r"ReLU neurons only.*LeakyReLU"):
        split_layout(arch[:-1], (2,))


# --- the leaf LP and a case only branch and bound certifies ---------------------------------------------


def test_the_leaf_lp_is_the_exact_minimum_over_the_constrained_box():
    arch, params, lo, hi = xor_net()
    layout = split_layout(arch[:-1], (2,))
    C = margin_rows(0, 2)
    # z1 = x1+x2 ≥ 0, z2 = x1-x2 ≤ 0, z3 = -x1+x2 ≥ 0, z4 = -x1-x2 ≤ 0: x2 ≥ |x1|, margin 1.5 - x2 ≥ 0.5
    splits = np.array([1, -1, 1, -1], np.int8)
    leaf = solve_leaf(arch, params, layout, lo, hi, C, splits, splits > 0)
    assert leaf.status == "verified" and abs(leaf.lower - 0.5) < TOL
    # a lower constant: the minimiser (x2 = 1) is a real counterexample
    params = [*params[:2], {**params[2], "bias": jnp.array([0.9, 0.0])}]
    leaf = solve_leaf(arch, params, layout, lo, hi, C, splits, splits > 0)
    assert leaf.status == "open" and abs(leaf.lower + 0.1) < TOL
    assert np.argmax(np.asarray(forward(arch, params, leaf.x[None]))[0]) == 1


def test_branch_and_bound_certifies_what_alpha_crown_cannot_and_its_bound_is_exact():
    arch, params, lo, hi = xor_net()
    x, y = np.zeros((1, 2), np.float32), np.zeros(1, np.int32)
    for relaxation in ("crown", "alpha-crown", "alpha-crown-full"):
        lb = margin_lower_bounds(arch, params, x, y, 1.0, relaxation=relaxation, lo=-1.0, hi=1.0)
        assert float(lb[0, 0]) < 0, relaxation
    C = margin_rows(0, 2)
    assert exact_margin_check(arch, params, lo, hi, C).status == "verified"
    options = BabOptions(batch=8, timeout=30.0)
    result = bab_example(Bounder(arch, params, (2,), 2, options), lo, hi, C, 0, options)
    assert result.state == "verified" and result.domains > 1
    assert abs(result.lower - 0.5) < TOL  # the exact minimum: the leaves' bounds are tight


# --- verdicts against the MILP ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("inherit", [True, False])
def test_branch_and_bound_verdicts_equal_the_milp_wherever_it_finishes(inherit):
    arch = mlp((12, 12), num_classes=3, dataset="none")  # 24 ReLUs
    options = BabOptions(batch=16, timeout=3.0, inherit=inherit)
    tally = {"verified": 0, "falsified": 0, "branched": 0}
    for seed in range(2):
        params = init_params(arch, (5,), seed=seed)
        bounder = Bounder(arch, params, (5,), 3, options)
        rng = np.random.default_rng(seed)
        for _ in range(8):
            x = rng.normal(size=5).astype(np.float32)
            y = int(np.argmax(forward(arch, params, x[None])))
            for eps in (0.15, 0.3):
                lo, hi, C = x - eps, x + eps, margin_rows(y, 3)
                result = bab_example(bounder, lo, hi, C, y, options)
                exact = exact_margin_check(arch, params, lo, hi, C, time_limit=60.0)
                if result.state == "verified":
                    assert exact.status == "verified"  # never verified where the MILP finds a counterexample
                    assert result.lower <= exact.lower + TOL
                elif result.state == "falsified":
                    assert exact.status == "violated"
                    assert np.all(result.x >= lo - 1e-6) and np.all(result.x <= hi + 1e-6)
                    assert np.argmax(np.asarray(forward(arch, params, result.x[None]))[0]) != y
                if result.state in tally:
                    tally[result.state] += 1
                    tally["branched"] += result.domains > 1
    assert tally["verified"] >= 5 and tally["falsified"] >= 5 and tally["branched"] >= 3, tally


def test_the_batch_program_compiles_once_for_every_step():
    _, in_shape, _, bounder = _tiny_bounder("mlp", 7, 8)
    lo = np.zeros(in_shape, np.float32)
    before = jitted_bound_domains._cache_size()
    for seed in range(3):
        splits = np.random.default_rng(seed).integers(-1, 2, (8, bounder.neurons)).astype(np.int8)
        bounder.bound(lo, lo + 0.5, margin_rows(seed % 3, 3), seed % 3, splits)
    assert jitted_bound_domains._cache_size() == before


# --- the certify stage and the CLI ------------------------------------------------------------------------


@pytest.mark.slow
def test_certify_settles_what_the_cascade_leaves_open_like_the_milp():
    from tests.test_evaluate import spheres_net

    arch, params, ds = spheres_net()  # 16 ReLUs
    common = {"relaxations": ("ibp",), "pgd_steps": 2, "pgd_restarts": 1, "apgd_steps": 0, "progress": False}
    with_bab = certify_dataset(arch, params, ds, 0.03, bab=BabOptions(batch=8, timeout=10.0), **common)
    with_milp = certify_dataset(arch, params, ds, 0.03, milp=True, milp_time_limit=20.0, **common)
    by_bab = with_bab.by == "bab"
    assert np.any(by_bab & (with_bab.states == "verified"))  # IBP leaves some open at this ε
    finished = by_bab & np.isin(with_bab.states, ("verified", "falsified"))
    np.testing.assert_array_equal(with_bab.states[finished], with_milp.states[finished])
    assert with_bab.accuracies()["cert_acc/bab"] == with_bab.accuracies()["cert_acc"]
    stage = next(s for s in with_bab.stages if s["stage"] == "bab")
    assert stage["domains"] == int(with_bab.bab_domains.sum()) > 0
    assert "Branch and bound:" in with_bab.markdown()
    assert with_bab.to_json()["examples"][0]["bab_domains"] >= 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bab-timeout", "5"], "--bab-timeout need --bab"),
        (["--bab", "--bab-timeout", "0"], "bab timeout must be"),
        (["--bab", "--bab-batch", "3"], "bab batch must be an even int"),
        (["--bab", "--bab-domains", "0"], "bab max_domains must be"),
    ],
)
def test_bad_bab_flags_fail_in_one_line_before_any_set_up(tmp_path, capsys, flags, message):
    assert main([str(tmp_path / "no-such-run"), *flags]) == 2  # the run folder is never looked at
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bab_options_are_checked():
    check_bab_options(BabOptions())
    with pytest.raises(ValueError, match="alpha_steps"):
        check_bab_options(BabOptions(alpha_steps=-1))
    with pytest.raises(ValueError, match="bab inherit must be a bool"):
        check_bab_options(BabOptions(inherit=1))
    with pytest.raises(ValueError, match=r"bab must be a jaxcert\.bab\.BabOptions"):
        certify_dataset(None, None, None, 0.1, bab={"timeout": 1})


def test_bad_bab_flags_fail_before_importing_jax(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "from jaxcert.certify import main\n"
        "codes = [main(['run', '--bab-timeout', '5']), main(['run', '--bab', '--bab-batch', '3'])]\n"
        "print(codes, sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2, 2] []"
