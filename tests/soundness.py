"""Shared machinery for soundness tests: tiny networks of every layer kind, and a check that no
sampled input (uniform points and box vertices) maps outside the computed bounds."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert.bounds import get_relaxation, input_box, margin_spec
from jaxcert.nets import Add, AvgPool, BatchNorm, Conv, Dense, Flatten, Normalize, ReLU, forward, init_params

#: Tiny architectures covering every layer kind: name -> (arch, input shape).
TINY_NETS = {
    "mlp": ((Normalize((0.3,), (0.4,)), Flatten(), Dense(6), ReLU(), Dense(5), ReLU(), Dense(3)), (4, 1)),
    "conv": (
        (Normalize((0.2, 0.5), (0.3, 0.6)), Conv(3, 3, 1, 1), ReLU(), Conv(4, 2, 2, 0), ReLU(), Flatten(), Dense(3)),
        (4, 4, 2),
    ),
    "bn": (
        (Conv(3, 3, 2, 1), BatchNorm(), ReLU(), Flatten(), Dense(5), BatchNorm(), ReLU(), Dense(3)),
        (4, 4, 1),
    ),
}
NET_NAMES = sorted(TINY_NETS)

#: Tiny nets of the layer graph (``Add`` shortcuts, ``AvgPool``): name -> (arch, input shape). Kept apart from
#: TINY_NETS (whose names parametrise the older tests); :func:`tiny_params` and :func:`assert_sound` take both.
GRAPH_NETS = {
    # a basic residual block (shortcut from a ReLU output), AvgPool, then a dense head: 2·48 + 48 + 5 ReLUs
    "residual": (
        (
            Normalize((0.2, 0.5), (0.3, 0.6)),
            Conv(3, 3, 1, 1),
            ReLU(),
            Conv(3, 3, 1, 1),
            ReLU(),
            Conv(3, 3, 1, 1),
            Add(source=3),
            ReLU(),
            AvgPool(2),
            Flatten(),
            Dense(5),
            ReLU(),
            Dense(3),
        ),
        (4, 4, 2),
    ),
    # shortcuts from the network input (node 0), from a pre-activation (node 2) and two Adds reading node 4
    "residual_mlp": (
        (
            Flatten(),
            Dense(4),
            Dense(4),
            ReLU(),
            Dense(4),
            Add(source=2),
            Add(source=0),
            ReLU(),
            Dense(4),
            Add(source=8),
            Add(source=8),
            ReLU(),
            Dense(3),
        ),
        (4,),
    ),
    "avgpool": (
        (Normalize((0.3,), (0.4,)), Conv(3, 3, 1, 1), ReLU(), AvgPool(2, 1), ReLU(), Flatten(), Dense(3)),
        (4, 4, 1),
    ),
}
GRAPH_NET_NAMES = sorted(GRAPH_NETS)
_ALL_NETS = {**TINY_NETS, **GRAPH_NETS}


def tiny_params(name: str, seed: int, weight_scale: float = 1.0):
    """Random params for a tiny net; BatchNorm gets random (non-trivial) statistics and affine terms."""
    arch, in_shape = _ALL_NETS[name]
    params = init_params(arch, in_shape, seed=seed)
    key = jax.random.key(seed + 1000)
    out = []
    for spec, p in zip(arch, params, strict=True):
        q = {k: v * weight_scale if k == "kernel" else v for k, v in p.items()}
        if "bias" in q:
            key, sub = jax.random.split(key)
            q["bias"] = 0.3 * jax.random.normal(sub, q["bias"].shape)
        if isinstance(spec, BatchNorm):
            k1, k2, k3, key = jax.random.split(key, 4)
            c = q["scale"].shape
            q["scale"] = jax.random.normal(k1, c)
            q["mean"] = 0.3 * jax.random.normal(k2, c)
            q["var"] = jax.random.uniform(k3, c, minval=0.2, maxval=2.0)
        out.append(q)
    return arch, in_shape, out


def sample_box(key: jax.Array, lower: jax.Array, upper: jax.Array, n: int) -> jax.Array:
    """``n`` uniform points and ``n`` random vertices of the box, shape (2n, *lower.shape)."""
    k1, k2 = jax.random.split(key)
    u = jax.random.uniform(k1, (n, *lower.shape))
    vertex = jax.random.bernoulli(k2, 0.5, (n, *lower.shape))
    uniform = lower + u * (upper - lower)
    corners = jnp.where(vertex, upper, lower)
    return jnp.concatenate([uniform, corners])


@functools.cache
def _bound_fn(net: str, relaxation: str, options: tuple):
    arch, _ = _ALL_NETS[net]
    fn = get_relaxation(relaxation)
    return jax.jit(lambda params, lo, hi, C: fn(arch, params, lo, hi, C, **dict(options)))


def assert_sound(
    relaxation: str,
    net: str,
    seed: int,
    eps: float,
    *,
    n_samples: int = 256,
    batch: int = 3,
    use_spec: bool = True,
    weight_scale: float = 1.0,
    **options,
) -> tuple[jax.Array, jax.Array]:
    """Check that sampled outputs of ``C f(x')`` stay inside the bounds; returns the bounds."""
    arch, in_shape, params = tiny_params(net, seed, weight_scale)
    key = jax.random.key(seed)
    kx, ky, ks = jax.random.split(key, 3)
    x = jax.random.uniform(kx, (batch, *in_shape))
    lo, hi = input_box(x, eps)
    n_out = arch[-1].features
    C = margin_spec(jax.random.randint(ky, (batch,), 0, n_out), n_out) if use_spec else None
    lb, ub = _bound_fn(net, relaxation, tuple(sorted(options.items())))(params, lo, hi, C)
    assert lb.shape == ub.shape
    assert bool(jnp.all(jnp.isfinite(lb))) and bool(jnp.all(jnp.isfinite(ub)))
    for b in range(batch):
        pts = sample_box(jax.random.fold_in(ks, b), lo[b], hi[b], n_samples)
        out = forward(arch, params, pts)
        if C is not None:
            out = out @ C[b].T
        tol = 1e-4 * (1.0 + jnp.abs(out))
        below = np.asarray(out < lb[b] - tol)
        above = np.asarray(out > ub[b] + tol)
        assert not below.any(), f"{relaxation}/{net}: sample below lower bound by {float(jnp.max(lb[b] - out))}"
        assert not above.any(), f"{relaxation}/{net}: sample above upper bound by {float(jnp.max(out - ub[b]))}"
    return lb, ub
