import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert.nets import Conv, Dense, Flatten, ReLU
from jaxcert.train import ibp_init, ibp_init_std, linear_ramp, recipe_schedule, smoothed_ramp, step_decay


def test_linear_ramp_values_at_key_steps():
    f = linear_ramp(1.0, 0.2, 10, 30)
    np.testing.assert_allclose([f(0), f(10), f(20), f(30), f(100)], [1.0, 1.0, 0.6, 0.2, 0.2], rtol=1e-6)


def test_linear_ramp_is_traceable():
    f = jax.jit(linear_ramp(0.0, 2.0, 0, 4))
    np.testing.assert_allclose(jax.vmap(f)(jnp.arange(6)), [0, 0.5, 1, 1.5, 2, 2], rtol=1e-6)


def test_smoothed_ramp_hits_its_ends_and_is_monotone_with_continuous_slope():
    begin, end, mid, p = 5, 105, 0.25, 4.0
    f = smoothed_ramp(0.0, 0.3, begin, end, mid=mid, power=p)
    t = jnp.arange(0, 130)
    v = np.asarray(jax.vmap(f)(t))
    assert v[0] == 0 and v[begin] == 0
    np.testing.assert_allclose(v[end:], 0.3, rtol=1e-6)
    assert np.all(np.diff(v) >= -1e-9)
    # polynomial start: slower than the linear ramp early on, then linear with the same slope
    lin = np.asarray(jax.vmap(linear_ramp(0.0, 0.3, begin, end))(t))
    assert np.all(v[begin + 1 : begin + 25] < lin[begin + 1 : begin + 25])
    m = begin + mid * (end - begin)
    h = 1e-2
    left = (float(f(m)) - float(f(m - h))) / h
    right = (float(f(m + h)) - float(f(m))) / h
    assert left == pytest.approx(right, rel=1e-2)
    # after the midpoint the increments are constant (linear part)
    inc = np.diff(v[int(m) + 1 : end])
    np.testing.assert_allclose(inc, inc[0], rtol=1e-3)


def test_recipe_schedule_warmup_ramp_and_final_values():
    s = recipe_schedule(0.1, warmup=10, ramp=20, kappa_final=0.5, beta_final=0.0)
    for step in (0, 10):
        v = s(step)
        assert float(v["eps"]) == 0.0 and float(v["kappa"]) == 1.0 and float(v["beta"]) == 1.0
    v = s(20)
    np.testing.assert_allclose([v["eps"], v["kappa"], v["beta"]], [0.05, 0.75, 0.5], rtol=1e-6)
    v = s(1000)
    np.testing.assert_allclose([v["eps"], v["kappa"], v["beta"]], [0.1, 0.5, 0.0], rtol=1e-6)
    smooth = recipe_schedule(0.1, warmup=10, ramp=20, eps_ramp="smooth")
    assert 0.0 < float(smooth(15)["eps"]) < float(s(15)["eps"])
    assert float(smooth(30)["eps"]) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs",
    [{"eps": -0.1}, {"eps": 0.1, "kappa_final": 1.5}, {"eps": 0.1, "warmup": -1}, {"eps": 0.1, "eps_ramp": "cubic"}],
)
def test_recipe_schedule_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        recipe_schedule(**kwargs)


def test_step_decay_multiplies_by_factor_at_each_decay_step():
    lr = step_decay(5e-4, [80, 90])
    np.testing.assert_allclose([lr(0), lr(79), lr(80), lr(89), lr(90), lr(500)], [5e-4] * 2 + [5e-5] * 2 + [5e-6] * 2)
    with pytest.raises(ValueError):
        step_decay(0.0, [1])


def test_ibp_init_draws_kernels_with_std_sqrt_2pi_over_fan_in_except_the_last_layer():
    arch = (Conv(32, 3, 1, 1), ReLU(), Flatten(), Dense(256), ReLU(), Dense(10))
    shapes = {0: (3, 3, 4, 32), 3: (8 * 8 * 32, 256), 5: (256, 10)}
    params = [{"kernel": jnp.ones(shapes[i]), "bias": jnp.ones(shapes[i][-1])} if i in shapes else {} for i in range(6)]
    new = ibp_init(arch, params, seed=1)
    conv_std = float(jnp.std(new[0]["kernel"]))
    dense_std = float(jnp.std(new[3]["kernel"]))
    assert conv_std == pytest.approx(math.sqrt(2 * math.pi) / (3 * 3 * 4), rel=0.05)
    assert dense_std == pytest.approx(ibp_init_std(8 * 8 * 32), rel=0.05)
    assert abs(float(jnp.mean(new[3]["kernel"]))) < 0.1 * dense_std
    np.testing.assert_array_equal(new[5]["kernel"], params[5]["kernel"])
    np.testing.assert_array_equal(new[0]["bias"], params[0]["bias"])
    np.testing.assert_array_equal(ibp_init(arch, params, seed=1)[0]["kernel"], new[0]["kernel"])  # deterministic
    assert not np.allclose(ibp_init(arch, params, seed=2)[0]["kernel"], new[0]["kernel"])
    with pytest.raises(ValueError):
        ibp_init(arch, params[:-1])
