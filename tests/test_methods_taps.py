"""TAPS and STAPS: IBP through the feature extractor, PGD through the classifier (jaxcert.train.methods.taps)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcert.bounds import certified_cross_entropy, input_box, interval_layers, margin_spec
from jaxcert.nets import Dense, Flatten, Normalize, ReLU, forward, init_params, split_trainable
from jaxcert.train import adversarial_trainer, recipe_schedule
from jaxcert.train.methods import make_objective, split_index
from jaxcert.train.methods.objective import step_key
from jaxcert.train.methods.sabr import box_margin_lower_bounds, sabr_region
from jaxcert.train.methods.sabr_attack import SABR_STEP
from jaxcert.train.methods.taps import connect, latent_milestones, latent_pgd, taps_margins
from jaxcert.train.schedules import RecipeSchedule

ARCH = (Normalize((0.5,), (0.3,)), Flatten(), Dense(12), ReLU(), Dense(8), ReLU(), Dense(3))
SHAPE = (2, 2, 1)
EPS = 0.1
SCHEDULE = recipe_schedule(EPS)  # ε = EPS and κ = 0 from step 0


@pytest.fixture(scope="module")
def problem():
    params = init_params(ARCH, SHAPE, seed=0)
    x = jax.random.uniform(jax.random.key(3), (16, *SHAPE))
    return params, x, jnp.arange(16) % 3


def taps(split, **kw):
    """R_TAPS alone (``taps_grad_scale`` 0), whose special cases the definition fixes; the paper's product below."""
    kw = {"taps_grad_scale": 0.0, **kw}
    return make_objective("taps", ARCH, "ibp", SCHEDULE, taps_split=split, attack_steps=kw.pop("steps", 6), **kw)


@pytest.mark.parametrize("estimator", ["multi", "single"])
def test_split_at_the_output_is_the_worst_corner_of_the_ibp_logit_box(problem, estimator):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    loss, aux = taps(len(ARCH), taps_estimator=estimator)(trainable, frozen, x, y, 0)
    lo, hi = interval_layers(ARCH, params, *input_box(x, EPS))[-1]
    worst = jnp.where(jax.nn.one_hot(y, 3, dtype=bool), lo, hi)  # z_y at its lower, every other z_j at its upper
    corner_lb = jnp.take_along_axis(lo, y[:, None], 1) - hi  # margins l_y - u_j (0 at j = y)
    worst_ce = jax.nn.logsumexp(worst, -1) - jnp.take_along_axis(lo, y[:, None], 1)[:, 0]
    np.testing.assert_allclose(loss, jnp.mean(worst_ce), rtol=1e-5)
    others = corner_lb[~np.asarray(jax.nn.one_hot(y, 3, dtype=bool))].reshape(16, 2)
    np.testing.assert_allclose(loss, jnp.mean(certified_cross_entropy(others)), rtol=1e-5)
    assert float(aux["taps_acc"]) == pytest.approx(float(jnp.mean(jnp.all(others > 0, -1))))


@pytest.mark.slow
def test_split_before_the_first_layer_is_pgd_training():
    """On a linear two-class model the CE's input gradient has one sign over the whole box, so every PGD
    start reaches the same worst corner: TAPS's latent attack on the input box and PGD training agree."""
    arch = (Normalize((0.5,), (0.3,)), Flatten(), Dense(2))
    params = init_params(arch, SHAPE, seed=1)
    trainable, frozen = split_trainable(params)
    x = jax.random.uniform(jax.random.key(4), (16, *SHAPE))
    y = jnp.arange(16) % 2
    objective = make_objective(
        "taps", arch, "ibp", SCHEDULE, taps_split=0, attack_steps=6, taps_estimator="single", taps_grad_scale=0.0
    )
    (loss, aux), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(trainable, frozen, x, y, 0)
    trainer = adversarial_trainer(arch, optax.sgd(0.0), SCHEDULE, attack_steps=6, step_size=EPS, lo=0.0, hi=1.0)
    _, pgd = trainer.step(trainer.init(params), x, y, step_key(0, 0))
    assert float(loss) == pytest.approx(float(pgd["loss"]), rel=1e-5)
    assert float(aux["taps_acc"]) == pytest.approx(float(pgd["adv_acc"]))
    assert float(optax.tree.norm(grads)) == pytest.approx(float(pgd["grad_norm"]), rel=1e-4)


@pytest.mark.parametrize("estimator", ["multi", "single"])
def test_the_estimate_lies_between_the_pgd_and_the_ibp_loss(problem, estimator):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    losses = [float(taps(k, taps_estimator=estimator)(trainable, frozen, x, y, 0)[0]) for k in (0, 4, len(ARCH))]
    assert losses[0] < losses[1] < losses[2]  # a deeper split bounds more of the net by intervals


def test_the_multi_estimator_finds_each_margins_minimum_over_the_latent_box(problem):
    """With the classifier one affine layer, each margin is linear on the latent box: its minimum is
    ``c·m - |c|·r`` (``c`` the margin's row through the layer), reached at a corner that the per-margin PGD finds;
    one shared point (the single estimator) cannot reach every margin's corner at once."""
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    split = len(ARCH) - 1
    (lat_lo, lat_hi) = interval_layers(ARCH[:split], params[:split], *input_box(x, EPS))[-1]
    W, b = params[-1]["kernel"], params[-1]["bias"]
    C = margin_spec(y, 3)  # (B, 2, 3): rows e_y - e_j
    rows = jnp.einsum("bkn,hn->bkh", C, W)
    mid, rad = (lat_lo + lat_hi) / 2, (lat_hi - lat_lo) / 2
    exact = jnp.einsum("bkh,bh->bk", rows, mid) - jnp.einsum("bkh,bh->bk", jnp.abs(rows), rad) + C @ b
    multi = taps_margins(ARCH, params, *input_box(x, EPS), y, jax.random.key(0), split=split, steps=6)
    np.testing.assert_allclose(multi, exact, rtol=1e-5, atol=1e-5)
    loss = taps(split)(trainable, frozen, x, y, 0)[0]
    np.testing.assert_allclose(loss, jnp.mean(certified_cross_entropy(exact)), rtol=1e-5)
    single = taps(split, taps_estimator="single")(trainable, frozen, x, y, 0)[0]
    assert float(single) < float(loss)  # the single point underestimates the worst case


def test_the_multi_estimators_step_schedule():
    assert latent_milestones(10) == () and latent_milestones(20) == (14,) and latent_milestones(60) == (24, 42)
    assert latent_milestones(100) == (30, 60, 80)


def test_the_connector_passes_the_gradient_to_the_bound_the_point_is_near():
    lower, upper = jnp.zeros(5), jnp.full(5, 2.0)
    point = jnp.array([0.0, 0.25, 1.0, 1.5, 2.0])  # slack 0.5 · 2 = 1: within 1 of a bound
    g_lo, g_hi, g_p = jax.grad(lambda a, b, p: jnp.sum(connect(a, b, p)), argnums=(0, 1, 2))(lower, upper, point)
    np.testing.assert_allclose(g_lo, [1.0, 0.75, 0.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(g_hi, [0.0, 0.0, 0.0, 0.5, 1.0], atol=1e-5)
    assert np.all(g_p == 0)
    assert np.array_equal(connect(lower, upper, point), point)


@pytest.mark.slow
def test_gradients_reach_the_extractor_through_the_connector(problem):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    grads = jax.jit(jax.grad(lambda t: taps(4)(t, frozen, x, y, 0)[0]))(trainable)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert float(jnp.max(jnp.abs(grads[2]["kernel"]))) > 0  # the first Dense is in the extractor

    # the same estimate with the latent point used as a constant: no gradient reaches the extractor
    def estimate(t, link):
        p = [dict(a, **b) for a, b in zip(t, frozen, strict=True)]
        lat = interval_layers(ARCH[:4], p[:4], *input_box(x, EPS))[-1]
        head = lambda z: forward(ARCH[4:], jax.lax.stop_gradient(p[4:]), z)
        point = latent_pgd(head, *lat, y, jax.random.key(0), steps=6)
        logits = forward(ARCH[4:], p[4:], connect(*lat, point) if link else point)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0])

    linked, unlinked = jax.grad(estimate)(trainable, True), jax.grad(estimate)(trainable, False)
    assert float(jnp.max(jnp.abs(linked[2]["kernel"]))) > 0
    assert float(jnp.max(jnp.abs(unlinked[2]["kernel"]))) == 0
    np.testing.assert_allclose(linked[6]["kernel"], unlinked[6]["kernel"])  # the classifier's gradient is g's


@pytest.mark.slow
def test_staps_with_lambda_one_is_taps_and_a_small_box_lowers_the_loss(problem):
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    staps = lambda lam: make_objective(
        "staps", ARCH, "ibp", SCHEDULE, taps_split=4, sabr_lambda=lam, attack_steps=6, taps_grad_scale=0.0
    )
    whole, plain = staps(1.0)(trainable, frozen, x, y, 0)[0], taps(4)(trainable, frozen, x, y, 0)[0]
    np.testing.assert_allclose(whole, plain, rtol=1e-6)
    assert float(staps(0.2)(trainable, frozen, x, y, 0)[0]) < float(taps(4)(trainable, frozen, x, y, 0)[0])


def test_split_index_range():
    assert split_index(0, 7) == 0 and split_index(7, 7) == 7 and split_index(-3, 7) == 4 and split_index(-7, 7) == 0
    for bad in (8, -8):
        with pytest.raises(ValueError, match="out of range for a network of 7 layers"):
            split_index(bad, 7)
    with pytest.raises(ValueError, match="out of range"):
        make_objective("taps", ARCH, "ibp", SCHEDULE, taps_split=len(ARCH) + 1)
    with pytest.raises(ValueError, match="IBP"):
        make_objective("staps", ARCH, "crown-ibp", SCHEDULE)
    with pytest.raises(ValueError, match="unknown TAPS estimator 'best'"):
        make_objective("taps", ARCH, "ibp", SCHEDULE, taps_estimator="best")
    with pytest.raises(ValueError, match="gradient scale must be >= 0"):
        make_objective("taps", ARCH, "ibp", SCHEDULE, taps_grad_scale=-1.0)


@pytest.mark.parametrize("kind", ["taps", "staps"])
def test_the_papers_loss_is_the_estimate_times_the_ibp_loss_with_the_estimates_gradient_scaled(problem, kind):
    """``L = expand(R, s) · L_IBP`` over the same region: the value ``R · L_IBP`` and the gradient
    ``s · L_IBP · ∇R + R · ∇L_IBP``, from the plain estimate (``s`` = 0) and the IBP loss of that region
    (TAPS: the ε-box; STAPS at λ = 1: the ε-box too)."""
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    objective = lambda s: make_objective(
        kind, ARCH, "ibp", SCHEDULE, taps_split=4, attack_steps=6, taps_grad_scale=s, sabr_lambda=1.0
    )
    ibp = make_objective("certified", ARCH, "ibp", SCHEDULE)
    value_and_grad = lambda f: jax.value_and_grad(lambda t: f(t, frozen, x, y, 0)[0])(trainable)
    (r, grad_r), (l_ibp, grad_ibp) = value_and_grad(objective(0.0)), value_and_grad(ibp)
    (loss, grads), aux = value_and_grad(objective(3.0)), objective(3.0)(trainable, frozen, x, y, 0)[1]
    np.testing.assert_allclose(loss, r * l_ibp, rtol=1e-5)
    np.testing.assert_allclose(aux["taps_ibp_loss"], l_ibp, rtol=1e-5)
    np.testing.assert_allclose(aux["taps_loss"], r, rtol=1e-5)
    expected = jax.tree_util.tree_map(lambda a, b: 3.0 * l_ibp * a + r * b, grad_r, grad_ibp)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(r) < float(l_ibp)  # the estimate lies below the IBP loss (so the product is not L_IBP²)


RAMP = recipe_schedule(EPS, ramp=10)  # ε_t = EPS · t / 10 and κ_t = 1 - t / 10 over steps 0..10


@pytest.mark.parametrize("kind", ["taps", "staps"])
def test_taps_trains_the_ibp_loss_while_eps_ramps_and_its_own_loss_from_the_ramps_end(problem, kind):
    """The papers' design (eth-sri/TAPS without ``--no-ibp-anneal``): IBP until ε reaches its final value.
    STAPS at λ = 1 bounds the ε-box, so in the ramp both equal plain IBP certified training, value and
    gradient; from step 10 on they equal the objective without the ramp."""
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    objective = lambda **kw: make_objective(
        kind, ARCH, "ibp", RAMP, taps_split=4, attack_steps=6, sabr_lambda=1.0, **kw
    )
    ibp = make_objective("certified", ARCH, "ibp", RAMP)
    value_and_grad = lambda f, step: jax.value_and_grad(lambda t: f(t, frozen, x, y, step)[0])(trainable)
    (loss, grads), (want, want_grads) = value_and_grad(objective(), 5), value_and_grad(ibp, 5)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    for got, expected in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    aux = objective()(trainable, frozen, x, y, 5)[1]
    assert float(aux["taps_phase"]) == 0.0
    np.testing.assert_allclose(aux["taps_loss"], aux["taps_ibp_loss"])  # the IBP bound stands in for R_TAPS
    unramped = objective(taps_ibp_ramp=False)
    assert abs(float(unramped(trainable, frozen, x, y, 5)[0]) - float(want)) > 1e-3  # the product already
    assert "taps_phase" not in unramped(trainable, frozen, x, y, 5)[1]
    for step in (10, 12):
        (ramped_loss, ramped_aux), unramped_loss = (
            objective()(trainable, frozen, x, y, step),
            unramped(trainable, frozen, x, y, step)[0],
        )
        np.testing.assert_allclose(ramped_loss, unramped_loss, rtol=1e-6)
        assert float(ramped_aux["taps_phase"]) == 1.0


def test_staps_trains_the_ibp_loss_of_sabrs_small_box_while_eps_ramps(problem):
    """STAPS's ramp phase is SABR with IBP: the IBP loss over the small box around the step's PGD point."""
    params, x, y = problem
    trainable, frozen = split_trainable(params)
    objective = make_objective("staps", ARCH, "ibp", RAMP, taps_split=4, attack_steps=6, sabr_lambda=0.4, seed=3)
    aux = objective(trainable, frozen, x, y, 5)[1]
    box_key = jax.random.split(step_key(3, 5))[0]
    logits_fn = lambda z: forward(ARCH, params, z)
    region = sabr_region(logits_fn, x, y, RAMP(5)["eps"], 0.4, box_key, steps=6, step_rel=SABR_STEP)
    want = jnp.mean(certified_cross_entropy(box_margin_lower_bounds(ARCH, params, *region, y)))
    np.testing.assert_allclose(aux["robust_loss"], want, rtol=1e-6)
    whole = make_objective("staps", ARCH, "ibp", RAMP, taps_split=4, attack_steps=6, sabr_lambda=1.0, seed=3)
    assert float(aux["robust_loss"]) < float(whole(trainable, frozen, x, y, 5)[1]["robust_loss"])  # not the ε-box


def test_the_ibp_ramp_needs_the_schedules_final_eps(problem):
    hand_built = RecipeSchedule(eps=RAMP.eps, kappa=RAMP.kappa, beta=RAMP.beta)
    with pytest.raises(ValueError, match="taps_ibp_ramp needs a schedule whose eps_final is known"):
        make_objective("taps", ARCH, "ibp", hand_built)
    make_objective("taps", ARCH, "ibp", hand_built, taps_ibp_ramp=False)  # without the ramp it needs none
