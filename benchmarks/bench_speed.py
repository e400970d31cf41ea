"""Seconds per model-epoch: plain `keras.fit` against packs of K models, in one run.

Writes `speed.json` and `speed.md` to the results folder, rewritten after every
row so that a run cut short by its time limit still leaves the rows it
finished. The absolute times mean something only on a GPU; the ratios against
the `keras.fit` baseline of the same run are the result. Every row trains on the
same synthetic images of CIFAR-10's shape with the same recipe, and every pack
holds the same members (configurations and seeds, so the same initial weights
and data order); only the way of training differs.

Settings (environment variables):

- `KT_SPEED_PACKS` (default `1,4,12,20`): sizes of the float32 packs.
- `KT_SPEED_VARIANTS` (default none): comma-separated variants trained as packs
  of each size in `KT_SPEED_VARIANT_PACK` (default 16; several sizes with
  commas), each next to a float32 pack of that size (added if `KT_SPEED_PACKS`
  lacks it). A variant joins parts with `+`: `bf16` (the recipe's
  `precision="mixed_bfloat16"`), `spe<N>` (`steps_per_execution=N`) and
  `host` (`device_data=False`: `fit` fed from host memory, the only way off
  JAX), and `im2col` or `shifts` (`conv_implementation`, see
  `packed.PackedConv2D`), e.g. `host,bf16,bf16+im2col`.
- `KT_SPEED_FIT_VARIANTS` (default none): more single-model `keras.fit` rows
  after the baseline, with parts `bf16` and `bs<N>` (batch size N: a
  different recipe), e.g. `bf16+bs512`.
- `KT_SPEED_IMAGES` (default 50000): training images; validation gets a fifth
  as many. A multiple of 5120 (e.g. 20480) leaves no partial batch, neither in
  training (batch 64, up to 16 steps per execution) nor in validation (batch
  1024), so the first epoch compiles each function once.
- `KT_SPEED_EPOCHS` (default 2): epochs per row; the first compiles, the others
  give "epoch s" (their median).
- `KT_SPEED_TRACE` (default none, JAX only): variants at the variant pack size
  (`f32` for the float32 one) to trace with the JAX profiler for
  `KT_SPEED_TRACE_STEPS` (default 50) training steps after their row; the
  trace is summarized by kernel into `trace-<pack>-<variant>.txt`.

Columns besides the times: the device memory in use after the row (JAX), the
row's seconds split into training (with the host's data preparation where
the images are not on the device) and validation,
the arithmetic rate these imply (multiply-adds of the network counted
analytically, training = 3x forward), and each member's training loss and
accuracy per epoch with, for variants, the largest difference from the float32
pack's members on the same data. Those learning columns show that a variant
still learns; a few epochs on synthetic data decide nothing about accuracy.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import pytest
from tabulate import tabulate

from kt_dropout.config import (
    NUM_BLOCKS,
    Recipe,
    VGGConfig,
    parse_positive_int,
    parse_positive_ints,
)
from kt_dropout.data.cifar10 import synthetic_cifar10
from kt_dropout.packing.model import CONV_IMPLEMENTATIONS
from kt_dropout.packing.trainer import Member, PackTrainer
from kt_dropout.study.experiments import CONFIGS
from kt_dropout.study.profiles import get_profile
from kt_dropout.training.callbacks import EpochTimer
from kt_dropout.training.recording import environment
from kt_dropout.training.run import train

from measured import CLOCK

pytestmark = pytest.mark.speed

MIX = ("bn", "conv0.2", "conv0.5", "conv0.2+dense0.5")  # a study's pack: configurations x seeds


# --- settings --------------------------------------------------------------------------------------


def parse_variant(label: str) -> tuple[dict, dict]:
    """`bf16+spe16` -> (Recipe changes, PackTrainer keyword arguments); `f32` is the plain float32 pack."""
    changes, kwargs = {}, {}
    for part in label.split("+"):
        if part == "bf16":
            changes["precision"] = "mixed_bfloat16"
        elif re.fullmatch(r"spe[1-9][0-9]*", part):
            kwargs["steps_per_execution"] = int(part[3:])
        elif part == "host":
            kwargs["device_data"] = False
        elif part in CONV_IMPLEMENTATIONS:
            kwargs["conv_implementation"] = part
        elif part != "f32":
            known = ", ".join(["bf16", "spe<N>", "host", *CONV_IMPLEMENTATIONS, "f32"])
            raise ValueError(f"KT_SPEED_VARIANTS: unknown part {part!r} in {label!r}; use one of {known}")
    return changes, kwargs


def parse_fit_variant(label: str) -> dict:
    """`bf16+bs512` -> Recipe changes {"precision": "mixed_bfloat16", "batch_size": 512} for a one-model row."""
    changes = {}
    for part in label.split("+"):
        if part == "bf16":
            changes["precision"] = "mixed_bfloat16"
        elif re.fullmatch(r"bs[1-9][0-9]*", part):
            changes["batch_size"] = int(part[2:])
        else:
            raise ValueError(f"KT_SPEED_FIT_VARIANTS: unknown part {part!r} in {label!r}; use bf16 or bs<N>")
    return changes


def _labels(name: str, default: str = "") -> list[str]:
    return [t.strip() for t in os.environ.get(name, default).split(",") if t.strip()]


def _count(name: str, default: str) -> int:
    return parse_positive_int(name, os.environ.get(name, default))


def _settings() -> dict:
    variants, fit_variants = _labels("KT_SPEED_VARIANTS"), _labels("KT_SPEED_FIT_VARIANTS")
    for label in variants:
        parse_variant(label)
    for label in fit_variants:
        parse_fit_variant(label)
    epochs = _count("KT_SPEED_EPOCHS", "2")
    if epochs < 2:
        raise ValueError("KT_SPEED_EPOCHS: need at least 2 (the first one compiles)")
    return {
        "packs": parse_positive_ints("KT_SPEED_PACKS", os.environ.get("KT_SPEED_PACKS", "1,4,12,20")),
        "variants": variants,
        "fit_variants": fit_variants,
        "variant_packs": parse_positive_ints("KT_SPEED_VARIANT_PACK", os.environ.get("KT_SPEED_VARIANT_PACK", "16")),
        "images": _count("KT_SPEED_IMAGES", "50000"),
        "epochs": epochs,
        "trace": _labels("KT_SPEED_TRACE"),
        "trace_steps": _count("KT_SPEED_TRACE_STEPS", "50"),
    }


def _plan(settings) -> list[tuple[int, str]]:
    """(pack size, variant) per pack row, in order: the float32 packs, then the variants."""
    rows = [(size, "f32") for size in settings["packs"]]
    for size in settings["variant_packs"] if settings["variants"] else []:
        if (size, "f32") not in rows:
            rows.append((size, "f32"))
        rows += [(size, v) for v in settings["variants"] if v != "f32"]
    return rows


# --- measuring -------------------------------------------------------------------------------------


def _device_bytes_in_use():
    if keras.backend.backend() != "jax":
        return None
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_in_use")


def forward_flops(config: VGGConfig) -> int:
    """Floating-point operations (2 per multiply-add) of one image through the network, forward."""
    height, width, channels = config.input_shape
    flops = 0
    for block in range(NUM_BLOCKS):
        filters = config.nfilters[block]
        flops += 2 * 9 * height * width * channels * filters  # 3x3 "same"
        height, width = height - 2, width - 2
        flops += 2 * 9 * height * width * filters * filters  # 3x3 "valid"
        height, width, channels = height // 2, width // 2, filters
    flat = height * width * channels
    return flops + 2 * (flat * config.ndense + config.ndense * config.ndense + config.ndense * config.num_classes)


def _members(size, profile):
    return [Member(MIX[i % len(MIX)], profile.scale(CONFIGS[MIX[i % len(MIX)]]), i // len(MIX)) for i in range(size)]


def _tflops(flops, seconds):
    return flops / seconds / 1e12 if seconds else None


def _fit_row(data, recipe, profile, epochs, variant: str = "") -> dict:
    config = profile.scale(CONFIGS["conv0.2+dense0.5"])
    recipe = recipe.replace(**(parse_fit_variant(variant) if variant else {}))
    timer = EpochTimer()
    record = train(config, data, recipe=recipe, epochs=epochs, verbose=0, callbacks=[timer])
    steady = record.seconds_per_epoch
    history = record.history
    return {
        "way": "keras.fit, one model" + (f", {variant}" if variant else ""), "models": 1,
        "variant": f"keras.fit+{variant}" if variant else "keras.fit",
        "first_epoch_s": record.first_epoch_seconds, "epoch_s": steady, "s_per_model_epoch": steady,
        "model_epoch_seconds": timer.seconds[1:],
        "device_bytes_in_use": _device_bytes_in_use(),
        "member_loss": [[v] for v in history["loss"]], "member_accuracy": [[v] for v in history["accuracy"]],
        "member_val_accuracy": [[v] for v in history["val_accuracy"]],
    }


def _pack_row(size, variant, data, recipe, profile, settings, out) -> Iterator[dict]:
    """Yields the row when measured, and again (the same dict) with its trace if one was asked for."""
    members = _members(size, profile)
    changes, kwargs = parse_variant(variant)
    recipe = recipe.replace(**changes)
    trainer = PackTrainer(members, data, recipe, **kwargs)
    seconds, parts, logs = [], [], []
    for _ in range(settings["epochs"]):
        start = time.perf_counter()
        logs.append(trainer.train_epoch())
        seconds.append(time.perf_counter() - start)
        parts.append(dict(trainer.last_epoch_seconds))
    memory = _device_bytes_in_use()
    steady = float(np.median(seconds[1:]))
    split = {key: float(np.median([p[key] for p in parts[1:]])) for key in ("fit", "evaluate")}
    flops = forward_flops(members[0].config) * size
    n_train, n_val = len(trainer.x_train), len(trainer.y_val)
    row = {
        "way": f"pack of {size}" + ("" if variant == "f32" else f", {variant}"), "models": size, "variant": variant,
        "precision": recipe.precision,
        "steps_per_execution": kwargs.get("steps_per_execution", 1),
        "device_data": trainer.device_data,
        "conv_implementation": kwargs.get("conv_implementation", "grouped"),
        "first_epoch_s": seconds[0], "epoch_s": steady, "s_per_model_epoch": steady / size,
        "model_epoch_seconds": [s / size for s in seconds[1:]],
        "device_bytes_in_use": memory,
        "fit_s": split["fit"], "eval_s": split["evaluate"],
        "train_tflops": _tflops(3 * flops * n_train, split["fit"]),
        "eval_tflops": _tflops(flops * n_val, split["evaluate"]),
        "member_loss": [log["loss"].tolist() for log in logs],
        "member_accuracy": [log["accuracy"].tolist() for log in logs],
        "member_val_accuracy": [log["val_accuracy"].tolist() for log in logs],
    }
    if variant in settings["trace"] and size == settings["variant_packs"][0]:
        # Written before tracing, so that a profiler failure cannot cost the row.
        row["trace"] = {"pending": True}
        yield row
        row["trace"] = _trace(trainer, settings["trace_steps"], out / f"trace-{size}-{variant}.txt")
    yield row
    del trainer
    gc.collect()


def _ways(settings) -> list[tuple]:
    """The rows to measure, in order: ("fit", variant) and ("pack", size, variant); the first is the baseline."""
    return ([("fit", "")] + [("fit", v) for v in settings["fit_variants"]]
            + [("pack", size, variant) for size, variant in _plan(settings)])


def _way_id(way) -> str:
    return f"keras.fit{'+' + way[1] if way[1] else ''}" if way[0] == "fit" else f"pack{way[1]}-{way[2]}"


SETTINGS = _settings()  # read as the tests are collected: a bad setting is an error naming its variable
WAYS = _ways(SETTINGS)


@pytest.fixture(scope="module")
def table(pytestconfig):
    """The run's data and its result, which each way's test adds its row to and writes out; finished (and
    written so) once every way has run."""
    profile = get_profile(pytestconfig.getoption("--kt-profile"))
    out = Path(pytestconfig.getoption("--kt-results"))
    images = SETTINGS["images"]
    result = {
        "images": images, "validation_images": images // 5, "batch_size": Recipe().batch_size,
        "epochs": SETTINGS["epochs"], "settings": SETTINGS, "profile": profile.name,
        "forward_flops_per_image": forward_flops(profile.scale(CONFIGS["bn"])),
        "environment": {**environment(), "platform": platform.platform()}, "rows": [], "finished": False,
    }
    data = synthetic_cifar10(n_train=images, n_test=images // 5)
    yield profile, out, data, result
    result["finished"] = len(result["rows"]) == len(WAYS)
    _write(out, result)


@pytest.mark.benchmark(timer=CLOCK)
@pytest.mark.parametrize("way", WAYS, ids=_way_id)
def test_speed(way, table, benchmark):
    """One way of training; its benchmark rounds are its seconds per model-epoch, one per epoch after the
    first (which compiles). Network widths follow --kt-profile (smoke shrinks them); the data is synthetic."""
    profile, out, data, result = table
    if way != WAYS[0] and not result["rows"]:
        pytest.skip("needs the keras.fit baseline, measured first in the same run (select it too)")
    if way[0] == "fit":
        rows = [_fit_row(data, Recipe(), profile, SETTINGS["epochs"], way[1])]
    else:
        rows = _pack_row(way[1], way[2], data, Recipe(), profile, SETTINGS, out)
    for row in rows:
        if not result["rows"] or result["rows"][-1] is not row:
            result["rows"].append(row)
        _write(out, result)
    CLOCK.replay(benchmark, row["model_epoch_seconds"])
    benchmark.extra_info.update(way=row["way"], speedup=row["speedup"])
    assert row["epoch_s"] > 0
    assert all(np.isfinite(np.asarray(row["member_loss"], dtype=float)).ravel()), row["way"]


# --- tracing (JAX profiler) ------------------------------------------------------------------------

CATEGORIES = (  # first match wins; tried on the kernel name and its HLO op
    ("convolution", re.compile(r"conv(?!ert)|dgrad|wgrad|fprop|winograd|implicit_gemm|implicit_convolve", re.I)),
    ("matmul", re.compile(r"gemm|matmul|\bdot|cublas|cutlass", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy|transpose", re.I)),
    ("XLA fusion (elementwise, reductions)", re.compile(r"fusion|reduce|loop_|input_|scatter|select", re.I)),
)


def _category(*names):
    for category, pattern in CATEGORIES:
        if any(name and pattern.search(name) for name in names):
            return category
    return "other"


def _busy_ns(intervals):
    """Length of the union of (start, end) intervals."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def summarize_trace(path, wall_s: float, steps: int, top: int = 25) -> tuple[dict, str]:
    """Time by kernel (GPU) or by XLA op (CPU, from the host plane) in a JAX profiler trace.

    Returns a summary (per-step seconds, how busy the device was between its
    first and last kernel, the share of kernel time per category) and a text
    table of the `top` kernels.
    """
    from jax.profiler import ProfileData

    data = ProfileData.from_file(str(path))
    events = []  # (name, hlo op, start ns, duration ns)
    for plane in data.planes:
        if not plane.name.startswith("/device:"):
            continue
        lines = list(plane.lines)
        streams = [line for line in lines if line.name.startswith("Stream")] or lines
        for line in streams:
            for event in line.events:
                stats = dict(event.stats)
                events.append((event.name, str(stats.get("hlo_op", "")), event.start_ns, event.duration_ns))
    source = "device kernels"
    if not events:  # no accelerator (or no CUPTI): the XLA ops the host ran
        source = "host XLA ops (no device plane in the trace)"
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    stats = dict(event.stats)
                    if "hlo_op" in stats:
                        events.append((event.name, str(stats["hlo_op"]), event.start_ns, event.duration_ns))
    summary = {"source": source, "steps": steps, "wall_s_per_step": wall_s / steps, "events": len(events)}
    if not events:
        return summary, f"no XLA events in the trace ({path})\n"
    kernel_ns = sum(e[3] for e in events)
    span_ns = max(e[2] + e[3] for e in events) - min(e[2] for e in events)
    busy_ns = _busy_ns([(e[2], e[2] + e[3]) for e in events])
    by_category, by_kernel = {}, {}
    for name, op, _, duration in events:
        category = _category(name, op)
        by_category[category] = by_category.get(category, 0) + duration
        entry = by_kernel.setdefault(name, [0, 0, category, op])
        entry[0] += duration
        entry[1] += 1
    summary.update({
        "kernel_s_per_step": kernel_ns / 1e9 / steps,
        "busy_s_per_step": busy_ns / 1e9 / steps,
        "busy_of_span": busy_ns / span_ns if span_ns else None,
        "busy_of_wall": busy_ns / 1e9 / wall_s if wall_s else None,
        "categories": {c: ns / kernel_ns for c, ns in sorted(by_category.items(), key=lambda kv: -kv[1])},
    })
    rows = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]
    table = tabulate(
        [[name[:90], category, op[:40], count / steps, ns / 1e6 / steps, ns / kernel_ns]
         for name, (ns, count, category, op) in rows],
        headers=["kernel", "category", "HLO op (one of)", "calls/step", "ms/step", "share"],
        tablefmt="github", floatfmt=".3f",
    )
    head = (
        f"{source}: {len(events)} events over {steps} training steps; wall {wall_s / steps * 1e3:.2f} ms/step, "
        f"device busy {busy_ns / 1e6 / steps:.2f} ms/step ({summary['busy_of_span']:.0%} of the span from the "
        f"first to the last kernel), kernels {kernel_ns / 1e6 / steps:.2f} ms/step\n\n"
        + "\n".join(f"- {c}: {share:.1%}" for c, share in summary["categories"].items())
    )
    return summary, f"{head}\n\n{table}\n"


def _trace(trainer: PackTrainer, steps: int, path: Path) -> dict:
    """Traces `steps` training steps (compiled beforehand) and writes the kernel table."""
    if keras.backend.backend() != "jax":
        return {"error": "profiling needs the JAX backend"}
    try:
        import jax

        batch = trainer.recipe.batch_size
        steps = min(steps, len(trainer.x_train) // batch)  # whole batches only: the compiled step's shape
        orders = [order[: steps * batch] for order in trainer.epoch_orders()]
        trainer.train_on_orders(orders)  # warm: compiles for this number of steps, fills caches
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0  # Keras' Python would swamp the trace and slow the steps
        with tempfile.TemporaryDirectory() as folder:
            with jax.profiler.trace(folder, profiler_options=options):
                start = time.perf_counter()
                trainer.train_on_orders(orders)
                wall = time.perf_counter() - start
            files = sorted(Path(folder).rglob("*.xplane.pb"))
            if not files:
                return {"error": "the profiler wrote no trace"}
            summary, text = summarize_trace(files[-1], wall, steps)
        path.write_text(text)
        summary["file"] = path.name
        return summary
    except Exception as error:  # a profile is a bonus: never lose the benchmark to it
        return {"error": f"{type(error).__name__}: {error}"}


# --- writing ---------------------------------------------------------------------------------------


def _finish_rows(rows: list[dict]) -> None:
    """Speed-ups against keras.fit and learning differences against the float32 pack of the same size."""
    baseline = rows[0]["s_per_model_epoch"]
    f32 = {r["models"]: r for r in rows if r.get("variant") == "f32"}
    for row in rows:
        row["speedup"] = baseline / row["s_per_model_epoch"]
        reference = f32.get(row["models"])
        if row["variant"] == "f32" or row["variant"].startswith("keras.fit") or reference is None:
            continue
        for key in ("loss", "accuracy", "val_accuracy"):
            mine, theirs = np.array(row[f"member_{key}"][-1]), np.array(reference[f"member_{key}"][-1])
            row[f"max_abs_diff_{key}_vs_f32"] = float(np.max(np.abs(mine - theirs)))


def _spread(values) -> str:
    values = np.asarray(values, dtype=float)
    if values.size == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]"


def _write(out: Path, result: dict) -> None:
    rows = result["rows"]
    _finish_rows(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=2))

    def gib(r):
        return None if r["device_bytes_in_use"] is None else r["device_bytes_in_use"] / 2**30

    speed = tabulate(
        [[r["way"], r["models"], r["first_epoch_s"], r["epoch_s"], r["s_per_model_epoch"], r["speedup"], gib(r),
          r.get("fit_s"), r.get("eval_s"), r.get("train_tflops"), r.get("eval_tflops")]
         for r in rows],
        headers=["way of training", "models", "first epoch s", "epoch s", "s per model-epoch", "x keras.fit",
                 "device GiB in use", "train s", "eval s", "train TFLOP/s", "eval TFLOP/s"],
        tablefmt="github", floatfmt=".3f",
    )
    learning = tabulate(
        [[r["way"], " -> ".join(f"{np.mean(epoch):.3f}" for epoch in r["member_loss"]),
          _spread(r["member_accuracy"][-1]), _spread(r["member_val_accuracy"][-1]),
          r.get("max_abs_diff_loss_vs_f32"), r.get("max_abs_diff_accuracy_vs_f32"),
          r.get("max_abs_diff_val_accuracy_vs_f32")] for r in rows],
        headers=["way of training", "train loss per epoch (mean of members)", "train accuracy, last epoch",
                 "val accuracy, last epoch", "max abs diff loss vs f32", "max abs diff accuracy vs f32",
                 "max abs diff val accuracy vs f32"],
        tablefmt="github", floatfmt=".4f",
    )
    profiles = []
    for r in rows:
        p = r.get("trace")
        if not p:
            continue
        if "categories" in p:
            shares = ", ".join(f"{c} {s:.0%}" for c, s in p["categories"].items())
            profiles.append(
                f"- {r['way']}: {p['source']}; wall {p['wall_s_per_step'] * 1e3:.2f} ms/step, device busy "
                f"{p['busy_s_per_step'] * 1e3:.2f} ms/step ({p['busy_of_span']:.0%} of the kernels' span); "
                f"kernel time: {shares} (`{p['file']}`)"
            )
        else:
            profiles.append(f"- {r['way']}: no profile ({p.get('error', 'did not finish')})")
    env = result["environment"]
    status = "" if result["finished"] else "\n**Unfinished**: the run stopped before its last row.\n"
    text = (
        f"# Training speed\n\n{result['images']} training + {result['validation_images']} validation images per "
        f"epoch, batch {result['batch_size']}, {result['epochs']} epochs per row (\"first epoch\" compiles, "
        f"\"epoch s\" is the median of the others), synthetic data, profile `{result['profile']}` widths; "
        f"backend {env['backend']} {env['versions']}, devices {env['devices']}. Rows are float32 unless named "
        "(`bf16`: mixed_bfloat16, `spe<N>`: steps_per_execution=N, `bs<N>`: batch size N, a different recipe); "
        "packs keep the training images on the device and run an epoch in one compiled call where the backend "
        "allows (JAX), unless named `host` (`fit` fed from host memory). \"train/eval s\" split a pack's epoch "
        "into training (with the host's data preparation for `host` packs) and validation; TFLOP/s count the network's "
        f"multiply-adds analytically ({result['forward_flops_per_image'] / 1e6:.0f} MFLOP per image forward, "
        f"training 3x that).\n{status}\n{speed}\n\n## Does it still learn\n\nPer-member training loss and "
        "accuracy (training mode, averaged over the epoch) and validation accuracy; the same members, initial "
        "weights and data order in every pack row, so variants compare member by member with the float32 pack "
        f"of their size. Not a claim about accuracy.\n\n{learning}\n"
    )
    if profiles:
        text += "\n## Where the time goes (JAX profiler, training steps only)\n\n" + "\n".join(profiles) + "\n"
    (out / "speed.md").write_text(text)
