"""One packed convolution, forward and backward, written several ways (JAX): which one runs fastest?

A pack's convolutions are grouped (`groups=K`, member k owns channel group k)
and on an H100 cuDNN runs them as K small convolutions plus channel slicing
(see `results/speed-variants-h100/`). This benchmark times, for each layer
shape of the network, the same packed convolution (same inputs, same kernels,
the outputs checked against each other first) as:

- `grouped`: `lax.conv_general_dilated(..., feature_group_count=K)` in NHWC,
  what Keras' `Conv2D(groups=K)` emits;
- `grouped_nchw`: the same in NCHW, cuDNN's native layout;
- `vmap`: `jax.vmap` of one member's convolution over a leading member axis;
- `im2col`: the 3x3 patches gathered (9x the activations) and one batched
  matmul over the member axis (`packed.PackedConv2D`'s computation);
- `shifts`: nine shifted batched matmuls, summed (no patch tensor; the same);

and two references that are not packed convolutions: `one_member`, a single
member's convolution (times K it is what K separate models cost in kernels
alone), and `big_batch`, one convolution of one member's width at batch K*B,
the same arithmetic as the pack in the form GPUs run best.

Settings: `KT_CONV_MEMBERS` (default 16), `KT_CONV_BATCH` (64),
`KT_CONV_WIDTHS` (the three blocks' filters, default `64,128,256`: the post's),
`KT_CONV_DTYPES` (`float32,bfloat16`), `KT_CONV_REPEATS` (20). Writes
`conv.json` and `conv.md` to the results folder.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from tabulate import tabulate

from kt_dropout.config import NUM_BLOCKS, parse_positive_int, parse_positive_ints
from kt_dropout.packing.model import packed_conv_matmuls
from kt_dropout.training.recording import environment
from measured import CLOCK

pytestmark = pytest.mark.speed

FORMULATIONS = ("grouped", "grouped_nchw", "vmap", "im2col", "shifts")
REFERENCES = ("one_member", "big_batch")


def layer_shapes(widths, size=32, channels=3) -> list[dict]:
    """(input size, in channels, out channels, padding) of the network's six convolutions."""
    layers = []
    for block in range(NUM_BLOCKS):
        filters = widths[block]
        layers.append({"size": size, "cin": channels, "cout": filters, "padding": "SAME"})
        layers.append({"size": size, "cin": filters, "cout": filters, "padding": "VALID"})
        size, channels = (size - 2) // 2, filters
    return layers


def packed_conv(name: str, members: int, padding: str):
    """f(x, w) for NHWC x (B, H, W, K*C) and Keras' grouped HWIO kernel w (3, 3, C, K*O) -> NHWC output."""
    import jax
    from jax import lax

    nhwc = ("NHWC", "HWIO", "NHWC")

    def grouped(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=nhwc, feature_group_count=members)

    def grouped_nchw(x, w):
        y = lax.conv_general_dilated(
            x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), (1, 1), padding,
            dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=members,
        )
        return y.transpose(0, 2, 3, 1)

    def split(x, w):  # (K, B, H, W, C) and (K, 3, 3, C, O)
        b, h, wd, kc = x.shape
        kernel = w.reshape(3, 3, w.shape[2], members, -1).transpose(3, 0, 1, 2, 4)
        return x.reshape(b, h, wd, members, kc // members).transpose(3, 0, 1, 2, 4), kernel

    def join(y):  # (K, B, H, W, O) -> (B, H, W, K*O)
        k, b, h, wd, o = y.shape
        return y.transpose(1, 2, 3, 0, 4).reshape(b, h, wd, k * o)

    def vmap(x, w):
        one = lambda xm, wm: lax.conv_general_dilated(xm, wm, (1, 1), padding, dimension_numbers=nhwc)  # noqa: E731
        return join(jax.vmap(one)(*split(x, w)))

    def matmuls(x, w):
        return packed_conv_matmuls(x, w, members, padding.lower(), name)

    return {"grouped": grouped, "grouped_nchw": grouped_nchw, "vmap": vmap}.get(name, matmuls)


def _timed(fn, args, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of jit(fn)(*args) after a compiling one."""
    import jax

    compiled = jax.jit(fn)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return times


def _forward_backward(conv):
    """Loss = <conv(x, w), g>; returns its gradients with respect to x and w (what training runs)."""
    import jax
    import jax.numpy as jnp

    return jax.grad(lambda x, w, g: jnp.sum((conv(x, w) * g).astype("float32")), argnums=(0, 1))


def measure_layer(layer: dict, members: int, batch: int, dtype: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    from jax import lax

    rng = np.random.default_rng(0)
    size, cin, cout, padding = layer["size"], layer["cin"], layer["cout"], layer["padding"]
    out = size if padding == "SAME" else size - 2
    x = jnp.asarray(rng.standard_normal((batch, size, size, members * cin)), dtype)
    w = jnp.asarray(rng.standard_normal((3, 3, cin, members * cout)) / np.sqrt(9 * cin), dtype)
    g = jnp.asarray(rng.standard_normal((batch, out, out, members * cout)), dtype)
    expected = np.asarray(packed_conv("grouped", members, padding)(x, w), "float32")
    tolerance = 2e-2 if dtype == "bfloat16" else 1e-3  # TF32 / bfloat16 accumulation orders differ
    seconds = {}
    for name in FORMULATIONS:
        conv = packed_conv(name, members, padding)
        got = np.asarray(jax.jit(conv)(x, w), "float32")
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= tolerance * scale, f"{name} disagrees with grouped on {layer}"
        seconds[name] = _timed(_forward_backward(conv), (x, w, g), repeats)

    def plain(xm, wm):
        return lax.conv_general_dilated(xm, wm, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    w1 = w[..., :cout]
    seconds["one_member"] = _timed(_forward_backward(plain), (x[..., :cin], w1, g[..., :cout]), repeats)
    big_x = jnp.asarray(rng.standard_normal((batch * members, size, size, cin)), dtype)
    big_g = jnp.asarray(rng.standard_normal((batch * members, out, out, cout)), dtype)
    seconds["big_batch"] = _timed(_forward_backward(plain), (big_x, w1, big_g), repeats)
    flops = 3 * 2 * 9 * out * out * cin * cout * batch * members  # forward + two backward convolutions
    median = {name: float(np.median(times)) for name, times in seconds.items()}
    return {**layer, "dtype": dtype, "seconds": median, "repeat_seconds": seconds,
            "tflops_grouped": flops / median["grouped"] / 1e12}


def _settings() -> dict:
    def count(name, default):
        return parse_positive_int(name, os.environ.get(name, default))

    return {
        "members": count("KT_CONV_MEMBERS", "16"),
        "batch": count("KT_CONV_BATCH", "64"),
        "widths": parse_positive_ints("KT_CONV_WIDTHS", os.environ.get("KT_CONV_WIDTHS", "64,128,256")),
        "dtypes": [d.strip() for d in os.environ.get("KT_CONV_DTYPES", "float32,bfloat16").split(",") if d.strip()],
        "repeats": count("KT_CONV_REPEATS", "20"),
    }


def _write(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "conv.json").write_text(json.dumps(result, indent=2))
    names = FORMULATIONS + REFERENCES
    rows = []
    for dtype in result["settings"]["dtypes"]:
        measured = [r for r in result["rows"] if r["dtype"] == dtype]
        for r in measured:
            rows.append([dtype, f"{r['size']}x{r['size']} {r['cin']}->{r['cout']} {r['padding'].lower()}",
                         *(r["seconds"][n] * 1e3 for n in names), r["tflops_grouped"]])
        if measured:
            total = {n: sum(r["seconds"][n] for r in measured) for n in names}
            rows.append([dtype, "all layers", *(total[n] * 1e3 for n in names), None])
            rows.append([dtype, "x grouped (all layers)", *(total["grouped"] / total[n] for n in names), None])
    s = result["settings"]
    table = tabulate(rows, headers=["dtype", "layer", *(f"{n} ms" for n in names), "grouped TFLOP/s"],
                     tablefmt="github", floatfmt=".3f")
    env = result["environment"]
    (out / "conv.md").write_text(
        f"# One packed convolution, forward and backward\n\n{s['members']} members, batch {s['batch']}, widths "
        f"{s['widths']}; median of {s['repeats']} jitted calls after a compiling one (ms); `one_member` is one "
        f"member's convolution (x{s['members']} for separate models), `big_batch` one member's convolution at "
        f"batch {s['members'] * s['batch']}. Backend {env['backend']} {env['versions']}, devices {env['devices']}."
        f"\n{'' if result['finished'] else chr(10) + '**Unfinished**.' + chr(10)}\n{table}\n"
    )


SETTINGS = _settings()  # read as the tests are collected: a bad setting is an error naming its variable


@pytest.fixture(scope="module")
def measured(pytestconfig) -> dict:
    """Every layer in every dtype and formulation, each checked against `grouped` before it is timed; the
    tables written after each layer."""
    if keras.backend.backend() != "jax":
        pytest.skip("the formulations are written in JAX")
    out = Path(pytestconfig.getoption("--kt-results"))
    result = {"settings": SETTINGS, "environment": {**environment(), "platform": platform.platform()},
              "rows": [], "finished": False}
    for dtype in SETTINGS["dtypes"]:
        for layer in layer_shapes(SETTINGS["widths"]):
            result["rows"].append(measure_layer(layer, SETTINGS["members"], SETTINGS["batch"], dtype,
                                                SETTINGS["repeats"]))
            _write(out, result)
    result["finished"] = True
    _write(out, result)
    return result


def test_conv_formulations_agree_and_are_timed(measured):
    assert len(measured["rows"]) == 6 * len(SETTINGS["dtypes"])
    assert all(s > 0 for r in measured["rows"] for s in r["seconds"].values())


@pytest.mark.benchmark(timer=CLOCK)
@pytest.mark.parametrize("dtype, formulation", [(d, n) for d in SETTINGS["dtypes"] for n in FORMULATIONS + REFERENCES])
def test_conv_seconds(dtype, formulation, measured, benchmark):
    """Its benchmark rounds are the seconds of the formulation's forward and backward convolutions over the
    network's six layers, one per repeat (the table's "all layers" row sums the layers' medians instead)."""
    layers = [r["repeat_seconds"][formulation] for r in measured["rows"] if r["dtype"] == dtype]
    CLOCK.replay(benchmark, [sum(repeat) for repeat in zip(*layers)])
