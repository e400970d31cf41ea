"""K copies of the post's network as one Keras model, so K runs train in one step.

At batch 64 a single network leaves a GPU nearly idle: the time goes to per-step
overhead, not arithmetic. Stacking K networks that share a shape (different
dropout rates, different seeds) into one model multiplies the arithmetic per
step by K and leaves the overhead as it is. Each member keeps its own weights,
BatchNorm statistics, dropout masks and Adam state:

- convolutions are grouped (`groups=K`): member k owns channel group k; or,
  with `conv_implementation`, the same grouped convolution as batched matmuls
  (`PackedConv2D`), which some devices run faster than a grouped convolution;
- BatchNormalization is per channel, so per member already;
- dense layers are `EinsumDense` with a leading member axis;
- `GroupDropout` drops each channel group at its own member's rate;
- the loss is the *sum* of the members' losses, so each member's gradient is
  exactly its own (Adam is element-wise, so its updates are too).

Members may read different input groups (one per seed, so that each seed sees
its own shuffling of the data): the input has 3*S channels and member k reads
group `input_groups[k]`.
"""

from __future__ import annotations

import keras
import numpy as np

from kt_dropout.config import NUM_BLOCKS, VGGConfig, check_choice
from kt_dropout.model import rescaling
from kt_dropout.seeding import layer_seed


class GroupDropout(keras.layers.Layer):
    """Dropout whose rate is given per channel (the last axis): one rate per packed member.

    `seed`: one generator for the whole layer ("global" seeding). `member_seeds`: one generator per member,
    each drawing the mask of its own equal group of channels, so that a member's masks depend on its seed, the
    layer and the step alone, not on the pack it is in ("per-layer" seeding).
    """

    def __init__(self, rates, seed=None, member_seeds=None, **kwargs):
        super().__init__(**kwargs)
        self.rates = [float(r) for r in rates]
        self.seed, self.member_seeds = seed, member_seeds
        if member_seeds is None:
            self.seed_generators = [keras.random.SeedGenerator(seed)]
        else:
            if len(self.rates) % len(member_seeds):
                raise ValueError(f"member_seeds: {len(member_seeds)} members cannot share {len(self.rates)} channels")
            self.seed_generators = [keras.random.SeedGenerator(s) for s in member_seeds]
        self.supports_masking = True

    def call(self, inputs, training=False):
        if not training:
            return inputs
        # Noise, mask and scale in float32 whatever the compute dtype (as keras.layers.Dropout): bfloat16
        # noise takes only 128 values, so it would drop 20.3% instead of 20%, and 1/(1 - rate) would be
        # rounded before it scales. In float32 the casts are no-ops and this is the float32 layer exactly.
        rates = keras.ops.convert_to_tensor(np.asarray(self.rates, dtype="float32"), dtype="float32")
        shape = keras.ops.shape(inputs)
        if len(self.seed_generators) == 1:
            noise = keras.random.uniform(shape, seed=self.seed_generators[0], dtype="float32")
        else:  # each member's channels from its own generator
            width = len(self.rates) // len(self.seed_generators)
            noise = keras.ops.concatenate([
                keras.random.uniform((*shape[:-1], width), seed=generator, dtype="float32")
                for generator in self.seed_generators
            ], axis=-1)
        keep = keras.ops.cast(noise >= rates, "float32")
        return keras.ops.cast(keras.ops.cast(inputs, "float32") * keep / (1.0 - rates), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rates": self.rates, "seed": self.seed, "member_seeds": self.member_seeds}


CONV_IMPLEMENTATIONS = ("grouped", "im2col", "shifts")


class PackedConv2D(keras.layers.Layer):
    """`Conv2D(members * filters, 3, padding, groups=members)` computed as batched matmuls.

    Same weights (kernel (3, 3, C, K*filters), bias (K*filters,)), same output.
    "im2col" gathers the nine 3x3 shifts of the input into one patch tensor
    (9x the activations) and contracts it with each member's kernel in one
    batched matmul; "shifts" sums nine batched matmuls, one per shift, and
    stores no patch tensor. cuDNN runs a grouped convolution as K small ones;
    these give the device K-way batched matmuls instead.
    """

    def __init__(self, members: int, filters: int, padding: str = "same", implementation: str = "im2col", **kwargs):
        super().__init__(**kwargs)
        check_choice("implementation", implementation, CONV_IMPLEMENTATIONS[1:])
        check_choice("padding", padding, ("same", "valid"))
        self.members, self.filters, self.padding, self.implementation = members, filters, padding, implementation

    def build(self, input_shape):
        channels = input_shape[-1] // self.members
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, channels, self.members * self.filters),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.members * self.filters,), initializer="zeros")

    def call(self, x):
        return packed_conv_matmuls(x, self.kernel, self.members, self.padding, self.implementation) + self.bias

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        if self.padding == "valid":
            height, width = height - 2, width - 2
        return (batch, height, width, self.members * self.filters)

    def get_config(self):
        return {**super().get_config(), "members": self.members, "filters": self.filters, "padding": self.padding,
                "implementation": self.implementation}


def packed_conv_matmuls(x, kernel, members: int, padding: str, implementation: str):
    """`PackedConv2D`'s convolution without bias: x (B, H, W, K*C), kernel (3, 3, C, K*O) -> (B, H', W', K*O)."""
    if padding == "same":
        x = keras.ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width, channels = x.shape[1] - 2, x.shape[2] - 2, x.shape[3] // members
    shifts = [  # the nine 3x3 shifts, each (B, H', W', K, C)
        keras.ops.reshape(x[:, i : i + height, j : j + width, :], (-1, height, width, members, channels))
        for i in range(3) for j in range(3)
    ]
    kernel = keras.ops.reshape(kernel, (9, channels, members, kernel.shape[-1] // members))
    if implementation == "im2col":
        y = keras.ops.einsum("tbhwkc,tcko->bhwko", keras.ops.stack(shifts), kernel)
    else:
        y = sum(keras.ops.einsum("bhwkc,cko->bhwko", shifted, kernel[t]) for t, shifted in enumerate(shifts))
    return keras.ops.reshape(y, (-1, height, width, kernel.shape[2] * kernel.shape[3]))


def _packed_conv(members: int, filters: int, padding: str, implementation: str, name: str) -> keras.layers.Layer:
    if implementation == "grouped":
        return keras.layers.Conv2D(members * filters, (3, 3), padding=padding, groups=members, name=name)
    return PackedConv2D(members, filters, padding, implementation, name=name)


def check_packable(configs: list[VGGConfig]) -> None:
    if not configs:
        raise ValueError("a pack needs at least one configuration")
    keys = {c.shape_key for c in configs}
    if len(keys) > 1:
        raise ValueError(
            "configurations in one pack must share nfilters, ndense, batchnorm, num_classes and input_shape; "
            f"got {len(keys)} different shapes (plan_packs splits them automatically)"
        )


def _per_channel(rates: list[float], width: int) -> list[float]:
    return [r for r in rates for _ in range(width)]


def _activation_stack(x, shape: VGGConfig, rates: list[float], width: int, prefix: str,
                      member_seeds: list[int] | None):
    """BatchNorm -> ReLU -> GroupDropout over K*width channels, as `model._activation_stack` per member."""
    if shape.batchnorm:
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{prefix}_relu")(x)
    if any(r > 0 for r in rates):
        name = f"{prefix}_dropout"
        seeds = None if member_seeds is None else [layer_seed(seed, name) for seed in member_seeds]
        x = GroupDropout(_per_channel(rates, width), member_seeds=seeds, name=name)(x)
    return x


def build_packed_model(
    configs: list[VGGConfig], input_groups: list[int] | None = None, pixel_scale: float = 1.0 / 256.0,
    name: str = "packed_dropout_vgg", input_dtype: str = "uint8", conv_implementation: str = "grouped",
    member_seeds: list[int] | None = None,
) -> keras.Model:
    """One model holding `len(configs)` members: images (B, H, W, 3*S) in, (B, K, classes) out.

    `conv_implementation` is one of `CONV_IMPLEMENTATIONS`: the grouped convolution
    itself, or `PackedConv2D`'s batched matmuls; the same weights and outputs.

    Layer names match `build_model`'s, so `pack_weights`/`member_weights` map weights by name.
    `input_dtype` must be the images' own: Keras casts inputs to it, and a cast of float pixels to
    uint8 would drop their fractions. `member_seeds`: the members' run seeds under "per-layer" seeding, whose
    dropout layers then draw from the seeds `build_model` gives them (`GroupDropout`); None: "global".
    The weights are initialised from the global stream: `pack_weights` copies the members' own in.
    """
    check_packable(configs)
    check_choice("conv_implementation", conv_implementation, CONV_IMPLEMENTATIONS)
    k = len(configs)
    groups = list(input_groups) if input_groups is not None else [0] * k
    if len(groups) != k:
        raise ValueError(f"input_groups: need one input group per member ({k}), got {len(groups)}")
    shape = configs[0]
    height, width, channels = shape.input_shape
    n_inputs = max(groups) + 1
    inputs = keras.Input(shape=(height, width, channels * n_inputs), dtype=input_dtype, name="images")
    x = rescaling(pixel_scale)(inputs)
    picks = [g * channels + c for g in groups for c in range(channels)]
    if picks != list(range(channels * n_inputs)):
        x = keras.layers.Lambda(lambda t: keras.ops.take(t, picks, axis=-1), name="member_inputs")(x)
    for block in range(NUM_BLOCKS):
        filters = shape.nfilters[block]
        rates = [c.dropout_conv[block] for c in configs]
        for conv, padding in ((1, "same"), (2, "valid")):
            prefix = f"block{block + 1}_conv{conv}"
            x = _packed_conv(k, filters, padding, conv_implementation, prefix)(x)
            x = _activation_stack(x, shape, rates, filters, prefix, member_seeds)
        x = keras.layers.MaxPooling2D(pool_size=(2, 2), name=f"block{block + 1}_pool")(x)
    # Flatten each member's (h, w, filters) in the same order as keras.layers.Flatten does.
    h, w = x.shape[1], x.shape[2]
    f = shape.nfilters[-1]
    x = keras.layers.Reshape((h, w, k, f), name="split_members")(x)
    x = keras.layers.Permute((3, 1, 2, 4), name="members_first")(x)
    x = keras.layers.Reshape((k, h * w * f), name="flatten")(x)
    dense_rates = [c.dropout_dense for c in configs]
    for dense in (1, 2):
        x = keras.layers.EinsumDense(
            "bki,kio->bko", output_shape=(k, shape.ndense), bias_axes="ko", name=f"dense{dense}"
        )(x)
        x = keras.layers.Reshape((k * shape.ndense,), name=f"dense{dense}_join")(x)
        x = _activation_stack(x, shape, dense_rates, shape.ndense, f"dense{dense}", member_seeds)
        x = keras.layers.Reshape((k, shape.ndense), name=f"dense{dense}_split")(x)
    x = keras.layers.EinsumDense(
        "bki,kio->bko", output_shape=(k, shape.num_classes), bias_axes="ko", name="predictions"
    )(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return keras.Model(inputs, outputs, name=name)


def _member_slices(packed_layer, member: int, members: int):
    """Index of member `member` in each weight of a packed layer (channel group or leading axis)."""
    for weight in packed_layer.weights:
        if isinstance(packed_layer, keras.layers.EinsumDense):
            yield weight, (member,)
        else:  # Conv2D, PackedConv2D and BatchNormalization: the last axis holds `members` equal groups
            size = weight.shape[-1] // members
            yield weight, (Ellipsis, slice(member * size, (member + 1) * size))


def _weighted_layers(model: keras.Model):
    return [layer for layer in model.layers if layer.weights]


def pack_weights(packed: keras.Model, members: list[keras.Model]) -> None:
    """Copies each member model's weights (e.g. its seeded initialization) into its slot of the pack."""
    for layer in _weighted_layers(members[0]):
        target = packed.get_layer(layer.name)
        values = [np.array(v) for v in target.get_weights()]
        for k, member in enumerate(members):
            source = member.get_layer(layer.name).get_weights()
            for (weight, index), src, value in zip(_member_slices(target, k, len(members)), source, values):
                value[index] = src
        target.set_weights(values)


def member_weights(packed: keras.Model, member: int, members: int) -> dict[str, list[np.ndarray]]:
    """Member `member`'s weights, by layer name, in the layout of a separately built model."""
    out = {}
    for layer in _weighted_layers(packed):
        values = [np.array(v) for v in layer.get_weights()]
        out[layer.name] = [value[index] for (_, index), value in zip(_member_slices(layer, member, members), values)]
    return out


def load_member(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> keras.Model:
    """Loads `member_weights` into a model built with `build_model` for that member's config."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
    return model
