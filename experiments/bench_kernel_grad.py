"""The convolution kernel gradient on XLA:CPU, implementation by implementation (issue 19).

For one conv layer (input ``x`` (B, H, W, C), kernel (k, k, C, O), stride ``s``) the kernel gradient is

    ∂W[i, j] = Σ_{n, h, w} x_pad[n, s·h + i, s·w + j, :]ᵀ · g[n, h, w, :]

Every variant is a map linear in ``W`` whose transpose XLA compiles (``jax.linear_transpose``), as the library
runs its kernel-gradient term (:mod:`jaxcert.nets.convolution`):

    xla            XLA's convolution (its kernel gradient: a convolution with an image-sized window)
    im2col-scan    the chunked patches, ``Σ_c P_cᵀ g_c`` (``conv_im2col.scanned_im2col_conv2d``, the rule's chunk)
    gt-scan:c      the chunked patches as ``Σ_c g_cᵀ P_c`` (``conv_im2col_gt``), ``c`` examples per step (no ``:c``:
                   the rule's chunk, ``conv_backends.im2col_batch_chunk``)
    gt-halves:c    gt-scan on each half of the batch: two independent loops, their sums added at the end
    cf-scan:c      chunked patches laid out channels first, ``P_cᵀ`` (k²C, K) from a once-transposed input
                   (``conv_im2col_cf``; no ``:c``: the rule's chunk, ``conv_backends.cf_batch_chunk``)
    taps-nhwc      no patches: one product per kernel offset ``(i, j)`` on a shifted window of the padded input
                   (its ``s²`` parity phases ``x_pad[:, p::s, q::s]`` at stride ``s``, so every window is a
                   contiguous box of one phase), contracting batch and both spatial axes, whole batch
    taps-cf        the same with the input transposed channels first once (each window a (C, B·H'·W') operand)
    flat-nhwc      the same on the row-padded, flattened phases: each window a contiguous range of rows
    stacked-cf     the ``k²`` channels-first windows as the batch axis of one ``dot_general``

Timing: each variant compiled first, then ``--rounds`` rounds that alternate the variants, each the least
of ``--repeats`` calls after a warm-up; CPU ms (user + system of the process, all threads:
``resource.getrusage``) and wall ms, best round. On a loaded machine compare CPU ms. ``--hlo`` adds, per
variant, the compiled program's products (YNNPACK fusions, Eigen ``dot``s, XLA convolutions) and its
copies (slice / copy / transpose fusions).

    python experiments/bench_kernel_grad.py                          # CNN7 (Fashion-MNIST) and CNN3, batch 128
    python experiments/bench_kernel_grad.py --archs cnn7,cnn3,cnn5 --variants xla,gt-scan,cf-scan:4
    python experiments/bench_kernel_grad.py --layers 2,3,4 --variants im2col-scan,gt-scan:1,gt-scan:2 --hlo
    python experiments/bench_kernel_grad.py --quick                  # seconds: tiny layers, two rounds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_VARIANTS = ("xla", "im2col-scan", "gt-scan", "gt-scan:1", "gt-scan:2", "gt-scan:4", "gt-scan:8", "cf-scan",
                    "taps-nhwc", "taps-cf", "flat-nhwc", "stacked-cf")  # fmt: skip
QUICK_LAYERS = [
    {"label": "quick 8×8 4→8", "x": [4, 8, 8, 4], "kernel": [3, 3, 4, 8], "stride": 1, "padding": 1},
    {"label": "quick 8×8 4→8 s2", "x": [4, 8, 8, 4], "kernel": [3, 3, 4, 8], "stride": 2, "padding": 1},
]


def conv_layers(batch: int, archs: tuple[str, ...] = ("cnn7", "cnn3")) -> list[dict[str, Any]]:
    """The conv layers of ``archs`` at Fashion-MNIST shapes, ``batch`` examples (a shape already listed once):
    label, x shape, kernel shape, stride, padding."""
    sys.path.insert(0, str(HERE))
    from profile_cnn7_step import layer_label, layer_plan

    layers, seen = [], set()
    for arch in archs:
        for layer in layer_plan(arch):
            key = (tuple(layer["shape"]), tuple(layer["kernel"]), layer.get("stride"))
            if layer["kind"] != "conv" or key in seen:
                continue
            seen.add(key)
            k = layer["kernel"][0]
            label = f"{arch} {layer_label(layer)[5:]}" + (f" k{k}" if k != 3 else "")
            layers.append({"label": label, "x": [batch, *layer["shape"]], "kernel": layer["kernel"],
                           "stride": layer["stride"], "padding": layer["padding"]})  # fmt: skip
    return layers


# ------------------------------------------------------------------------------------------- the variants
def _geometry(x_shape: tuple[int, ...], k_shape: tuple[int, ...], s: int, p: int) -> tuple[int, ...]:
    """``(H', W', Hφ, Wφ)``: output size and the size of one parity phase that holds every window."""
    kh, kw = k_shape[:2]
    out_h, out_w = (x_shape[1] + 2 * p - kh) // s + 1, (x_shape[2] + 2 * p - kw) // s + 1
    return out_h, out_w, out_h + (kh - 1) // s, out_w + (kw - 1) // s


def _phases(x: Any, k_shape: tuple[int, ...], s: int, p: int, channels_first: bool) -> dict[tuple[int, int], Any]:
    """``{(a, b): x_pad[:, a::s, b::s]}`` cut to (B, Hφ, Wφ, C), or (C, B, Hφ, Wφ) channels first."""
    import jax.numpy as jnp

    _, _, ph_h, ph_w = _geometry(x.shape, k_shape, s, p)
    extra_h, extra_w = max(s * ph_h - x.shape[1] - p, 0), max(s * ph_w - x.shape[2] - p, 0)
    x_pad = jnp.pad(x, ((0, 0), (p, extra_h), (p, extra_w), (0, 0)))[:, : s * ph_h, : s * ph_w]
    if channels_first:
        x_pad = jnp.transpose(x_pad, (3, 0, 1, 2))
    axes = (2, 3) if channels_first else (1, 2)
    index = lambda a, b: tuple(slice(a, None, s) if d == axes[0] else slice(b, None, s) if d == axes[1] else
                               slice(None) for d in range(4))  # fmt: skip
    return {(a, b): x_pad[index(a, b)] for a in range(min(s, k_shape[0])) for b in range(min(s, k_shape[1]))}


def _window(phase: Any, i: int, j: int, s: int, out: tuple[int, int], axes: tuple[int, int]) -> Any:
    """The window of kernel offset ``(i, j)``: a contiguous box of its phase."""
    import jax

    first = jax.lax.slice_in_dim(phase, i // s, i // s + out[0], axis=axes[0])
    return jax.lax.slice_in_dim(first, j // s, j // s + out[1], axis=axes[1])


def taps_nhwc(x: Any, k: Any, s: int, p: int) -> Any:
    """``y = Σ_{i,j} window_{ij}(x) · W[i, j]`` on NHWC windows, whole batch."""
    import jax

    out_h, out_w, _, _ = _geometry(x.shape, k.shape, s, p)
    phases = _phases(x, k.shape, s, p, channels_first=False)
    windows = ((_window(phases[i % s, j % s], i, j, s, (out_h, out_w), (1, 2)), k[i, j])
               for i in range(k.shape[0]) for j in range(k.shape[1]))  # fmt: skip
    return sum(jax.lax.dot_general(win, w, (((3,), (0,)), ((), ()))) for win, w in windows)


def taps_cf(x: Any, k: Any, s: int, p: int) -> Any:
    """The same on channels-first windows, each reshaped to (C, B·H'·W')."""
    import jax

    out_h, out_w, _, _ = _geometry(x.shape, k.shape, s, p)
    phases = _phases(x, k.shape, s, p, channels_first=True)
    y = 0
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            win = _window(phases[i % s, j % s], i, j, s, (out_h, out_w), (2, 3)).reshape(k.shape[2], -1)
            y = y + jax.lax.dot_general(win, k[i, j], (((0,), (0,)), ((), ())))
    return y.reshape(x.shape[0], out_h, out_w, k.shape[3])


def flat_nhwc(x: Any, k: Any, s: int, p: int) -> Any:
    """The same on the flattened phases (B·Hφ·Wφ, C): window ``(i, j)`` is rows ``[off, off + L)``, ``off =
    ⌊i/s⌋·Wφ + ⌊j/s⌋``; the rows of positions outside the output (``h ≥ H'`` or ``w ≥ W'``) are computed and
    dropped, and their cotangent is zero."""
    import jax
    import jax.numpy as jnp

    kh, kw, cin, cout = k.shape
    out_h, out_w, ph_h, ph_w = _geometry(x.shape, k.shape, s, p)
    total = x.shape[0] * ph_h * ph_w
    rows = total - ((kh - 1) // s) * ph_w - (kw - 1) // s
    phases = {key: v.reshape(total, cin) for key, v in _phases(x, k.shape, s, p, channels_first=False).items()}
    y = 0
    for i in range(kh):
        for j in range(kw):
            off = (i // s) * ph_w + j // s
            win = jax.lax.slice_in_dim(phases[i % s, j % s], off, off + rows, axis=0)
            y = y + jax.lax.dot_general(win, k[i, j], (((1,), (0,)), ((), ())))
    y = jnp.pad(y, ((0, total - rows), (0, 0))).reshape(x.shape[0], ph_h, ph_w, cout)
    return y[:, :out_h, :out_w]


def stacked_cf(x: Any, k: Any, s: int, p: int) -> Any:
    """The ``k²`` channels-first windows (k², C, B·H'·W') as the batch axis of one ``dot_general``."""
    import jax
    import jax.numpy as jnp

    kh, kw, cin, cout = k.shape
    out_h, out_w, _, _ = _geometry(x.shape, k.shape, s, p)
    phases = _phases(x, k.shape, s, p, channels_first=True)
    wins = [_window(phases[i % s, j % s], i, j, s, (out_h, out_w), (2, 3)).reshape(cin, -1)
            for i in range(kh) for j in range(kw)]  # fmt: skip
    y = jax.lax.dot_general(jnp.stack(wins), k.reshape(kh * kw, cin, cout), (((1,), (1,)), ((0,), (0,))))
    return y.sum(0).reshape(x.shape[0], out_h, out_w, cout)


def halves(conv: Callable[..., Any]) -> Callable[..., Any]:
    """``conv`` on the two halves of the batch, concatenated: its kernel gradient is two independent loops whose
    sums are added at the end (XLA:CPU's thunk executor may run them at the same time)."""
    import jax.numpy as jnp

    def split(x: Any, k: Any, s: int, p: int) -> Any:
        half = x.shape[0] // 2
        return jnp.concatenate([conv(x[:half], k, s, p), conv(x[half:], k, s, p)])

    return split


def variant(name: str, layer: dict[str, Any]) -> Callable[..., Any]:
    """The linear map ``(x, W, s, p) -> conv(x, W)`` a variant name stands for."""
    from jaxcert.nets.conv_backends import cf_batch_chunk, im2col_batch_chunk
    from jaxcert.nets.conv_im2col import scanned_im2col_conv2d
    from jaxcert.nets.conv_im2col_cf import scanned_im2col_cf_conv2d
    from jaxcert.nets.conv_im2col_gt import scanned_im2col_gt_conv2d
    from jaxcert.nets.convolution import xla_conv2d

    base, _, arg = name.partition(":")
    shapes = (tuple(layer["x"]), tuple(layer["kernel"]), layer["stride"], layer["padding"])
    rule_chunk = im2col_batch_chunk(*shapes)
    if base == "im2col-scan":
        chunk = int(arg) if arg else rule_chunk
        return lambda x, k, s, p: scanned_im2col_conv2d(x, k, s, p, chunk)
    if base in ("gt-scan", "gt-halves"):  # no chunk given: the rule's
        chunk = min(int(arg) if arg else rule_chunk, layer["x"][0] // (2 if base == "gt-halves" else 1))
        gt = lambda x, k, s, p: scanned_im2col_gt_conv2d(x, k, s, p, chunk)
        return gt if base == "gt-scan" else halves(gt)
    if base == "cf-scan":
        chunk = min(int(arg) if arg else cf_batch_chunk(*shapes), layer["x"][0])
        return lambda x, k, s, p: scanned_im2col_cf_conv2d(x, k, s, p, chunk)
    fixed = {"xla": xla_conv2d, "taps-nhwc": taps_nhwc, "taps-cf": taps_cf, "flat-nhwc": flat_nhwc,
             "stacked-cf": stacked_cf}  # fmt: skip
    if base not in fixed:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(DEFAULT_VARIANTS)} (any chunk after ':')")
    return fixed[base]


def hlo_facts(text: str) -> dict[str, int]:
    """Products and copies in a compiled XLA:CPU program: YNNPACK fusions, Eigen dots, convolutions, and
    the loop fusions that copy (slice, copy, transpose, concatenate) — counted per instruction outside
    fused computations (a loop body's instructions count once)."""
    entry, fused = [], False
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%(\S+) .*\{\s*$", line)
        if header:  # instructions inside fusions are not thunks of their own
            fused = re.match(r"(fused_|wrapped_)", header.group(1)) is not None
        elif not fused and re.match(r"^\s+(ROOT )?%", line):
            entry.append(line)
    has = lambda pattern: sum(bool(re.search(pattern, line)) for line in entry)
    return {"ynn": has(r"__ynn_fusion"), "eigen_dot": has(r"= f32\S* dot\("), "convolution": has(r" convolution\("),
            "copies": has(r"%(\w*(slice|copy|transpose)\w*_fusion\S*|stack\S*|concatenate\S*) = ")}  # fmt: skip


# ------------------------------------------------------------------------------------------------- driver
def run(layers: list[dict[str, Any]], names: list[str], rounds: int, repeats: int, hlo: bool) -> list[dict[str, Any]]:
    import jax

    sys.path.insert(0, str(HERE))
    from profile_cnn7_step import measure

    from jaxcert.nets.convolution import xla_conv2d

    rows = []
    for layer in layers:
        s, p = layer["stride"], layer["padding"]
        kx, kk, kg = jax.random.split(jax.random.key(0), 3)
        x = jax.random.uniform(kx, tuple(layer["x"]))
        kernel = 0.05 * jax.random.normal(kk, tuple(layer["kernel"]))
        g = jax.random.normal(kg, jax.eval_shape(lambda: xla_conv2d(x, kernel, s, p)).shape)
        want = jax.linear_transpose(lambda w: xla_conv2d(x, w, s, p), kernel)(g)[0]
        calls, facts = {}, {}
        for name in names:
            conv = variant(name, layer)
            grad = lambda x_, g_, conv=conv: jax.linear_transpose(lambda w: conv(x_, w, s, p), kernel)(g_)[0]
            compiled = jax.jit(grad).lower(x, g).compile()
            err = float(abs(compiled(x, g) - want).max() / abs(want).max())
            if err > 1e-4:
                raise AssertionError(f"{name} on {layer['label']}: kernel gradient off by {err:.1e} (relative)")
            facts[name] = hlo_facts(compiled.as_text()) if hlo else {}
            calls[name] = lambda compiled=compiled: compiled(x, g)
        timings: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for _ in range(rounds):
            for name in names:
                timings[name].append(measure(calls[name], jax.block_until_ready, repeats))
        for name in names:
            best = {key: min(t[key] for t in timings[name]) for key in ("cpu_ms", "wall_ms")}
            rows.append({"layer": layer["label"], "variant": name, **best, **facts[name],
                         "load": os.getloadavg()[0]})  # fmt: skip
        print(markdown(rows[-len(names) :], names), file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], names: list[str]) -> str:
    """One row per (layer, variant): CPU and wall ms, CPU relative to im2col-scan (or the first variant)."""
    base_name = "im2col-scan" if "im2col-scan" in names else names[0]
    base = {r["layer"]: r["cpu_ms"] for r in rows if r["variant"] == base_name}
    hlo = "ynn" in rows[0]
    head = f"| layer | variant | CPU ms | wall ms | CPU vs {base_name} |"
    head += " YNN / Eigen dot / conv / copies |" if hlo else ""
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        cells = f"| {r['layer']} | {r['variant']} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | "
        cells += f"{base[r['layer']] / r['cpu_ms']:.2f}× |"
        if hlo:
            cells += f" {r['ynn']} / {r['eigen_dot']} / {r['convolution']} / {r['copies']} |"
        lines.append(cells)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--archs", default="cnn7,cnn3", help="comma-separated architectures whose conv layers to time")
    p.add_argument("--layers", help="comma-separated 1-based indices into the layer list (default: all)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated variant names")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (best counts)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant and round")
    p.add_argument("--hlo", action="store_true", help="count products and copies in each compiled program")
    p.add_argument("--quick", action="store_true", help="two tiny layers, batch 4 (seconds)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_kernel_grad.json")
    args = p.parse_args(argv)
    if min(args.batch, args.rounds, args.repeats) < 1:
        p.error("--batch, --rounds and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    layers = QUICK_LAYERS if args.quick else conv_layers(args.batch, tuple(args.archs.split(",")))
    if args.layers:
        picked = [int(i) for i in args.layers.split(",")]
        if not all(1 <= i <= len(layers) for i in picked):
            raise SystemExit(f"--layers: indices 1..{len(layers)} ({', '.join(x['label'] for x in layers)})")
        layers = [layers[i - 1] for i in picked]
    names = args.variants.split(",")
    for name in names:
        variant(name, layers[0])  # unknown names fail before any compilation
    load_before = os.getloadavg()[0]
    rows = run(layers, names, args.rounds, args.repeats, args.hlo)
    from jaxcert.provenance import provenance

    result = {"rounds": args.rounds, "repeats": args.repeats, "load_before": load_before,
              "load_after": os.getloadavg()[0], "rows": rows, "provenance": provenance()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    text = markdown(rows, names)
    args.out.with_suffix(".md").write_text(
        f"Kernel gradient alone, best of {args.rounds} alternating rounds × {args.repeats} calls; load "
        f"{load_before:.1f} before, {result['load_after']:.1f} after.\n\n{text}"
    )
    print(text)
    return result


if __name__ == "__main__":
    main()
