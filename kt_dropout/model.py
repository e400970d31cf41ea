"""The post's network, built layer for layer as in its original Keras script."""

from __future__ import annotations

import contextlib

import keras

from kt_dropout import determinism
from kt_dropout.config import NUM_BLOCKS, Recipe, VGGConfig
from kt_dropout.objectives import accuracy, crossentropy
from kt_dropout.seeding import layer_seed


def _seed(seed: int | None, layer: str) -> int | None:
    """Layer `layer`'s own seed under "per-layer" seeding; None (Keras's global stream) under "global"."""
    return None if seed is None else layer_seed(seed, layer)


def _kernel(seed: int | None, layer: str) -> keras.initializers.Initializer:
    """Keras's default kernel initializer (Glorot uniform), seeded as `_seed` says; biases start at zero."""
    return keras.initializers.GlorotUniform(seed=_seed(seed, layer))


def _activation_stack(x, config: VGGConfig, rate: float, prefix: str, seed: int | None):
    """BatchNorm (if enabled) -> ReLU -> Dropout, the post's order after every conv and dense layer."""
    if config.batchnorm:
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{prefix}_relu")(x)
    if rate > 0:  # Dropout(0) is an identity: leave it out
        x = keras.layers.Dropout(rate, seed=_seed(seed, f"{prefix}_dropout"), name=f"{prefix}_dropout")(x)
    return x


def rescaling(pixel_scale: float) -> keras.layers.Rescaling:
    """The networks' first layer: pixels in 0..255 (uint8 or float) times `pixel_scale`.

    Computed in float32 whatever the precision: a bfloat16 network's first convolution rounds these values
    once, as it rounded the float32 images that the data pipeline scaled before the networks scaled their
    own (for pixels 0..255 times 2**-8 nothing is rounded at all).
    """
    return keras.layers.Rescaling(pixel_scale, dtype="float32", name="rescale")


def build_model(
    config: VGGConfig | None = None, name: str = "dropout_vgg", pixel_scale: float = 1.0 / 256.0,
    seed: int | None = None,
) -> keras.Model:
    """Builds the post's VGG-like CNN for `config` (uncompiled).

    It takes images as they are, pixels in 0..255, and scales them itself
    (`rescaling(pixel_scale)`; `build_compiled` passes `Recipe.pixel_scale`).
    Each of the three blocks is a 3x3 `same` conv and a 3x3 `valid` conv, each
    followed by BatchNorm -> ReLU -> Dropout(block rate), then a 2x2 max-pool.
    Then Flatten, two Dense(ndense) -> BatchNorm -> ReLU -> Dropout(dense rate),
    and a softmax classifier. Layers keep Keras's defaults (biases, initializers).

    `seed`: the run's seed under "per-layer" seeding (`kt_dropout.seeding`): each layer's initializer and
    dropout draw from `layer_seed(seed, its name)`. None: from Keras's global stream, as
    `keras.utils.set_random_seed` seeded it ("global" seeding).
    """
    config = config or VGGConfig()
    inputs = keras.Input(shape=config.input_shape, name="image")
    x = rescaling(pixel_scale)(inputs)
    for block in range(NUM_BLOCKS):
        filters, rate = config.nfilters[block], config.dropout_conv[block]
        for conv, padding in ((1, "same"), (2, "valid")):
            prefix = f"block{block + 1}_conv{conv}"
            x = keras.layers.Conv2D(filters, (3, 3), padding=padding, kernel_initializer=_kernel(seed, prefix),
                                    name=prefix)(x)
            x = _activation_stack(x, config, rate, prefix, seed)
        x = keras.layers.MaxPooling2D(pool_size=(2, 2), name=f"block{block + 1}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for dense in (1, 2):
        prefix = f"dense{dense}"
        x = keras.layers.Dense(config.ndense, kernel_initializer=_kernel(seed, prefix), name=prefix)(x)
        x = _activation_stack(x, config, config.dropout_dense, prefix, seed)
    # float32 whatever the precision: a bfloat16 softmax would round the probabilities the loss reads.
    outputs = keras.layers.Dense(config.num_classes, activation="softmax", dtype="float32",
                                 kernel_initializer=_kernel(seed, "predictions"), name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def build_compiled(config: VGGConfig, recipe: Recipe, seed: int | None = None) -> keras.Model:
    """`build_model(config)` under the recipe's precision and pixel scale, seeded as the recipe says
    (`layer_seeds`), compiled with the recipe; the backend's kernels deterministic or not as the recipe says
    (`determinism.use`)."""
    determinism.use(recipe.deterministic)
    with precision_scope(recipe.precision):
        model = build_model(config, pixel_scale=recipe.pixel_scale, seed=layer_seeds(recipe, seed))
    return compile_model(model, recipe)


def layer_seeds(recipe: Recipe, seed: int | None) -> int | None:
    """`build_model`'s `seed` for a run seeded `seed` under `recipe.seeding`: the run's seed under "per-layer",
    None (the global stream) under "global" or for a model built without a run seed (a tuner's trial, seeded
    through the global stream by its search)."""
    return seed if recipe.seeding == "per-layer" else None


@contextlib.contextmanager
def precision_scope(precision: str):
    """Layers built inside compute under dtype policy `precision` (see `Recipe.precision`)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def compile_model(model: keras.Model, recipe: Recipe | None = None) -> keras.Model:
    """Compiles with the post's recipe: Adam, categorical cross-entropy, accuracy.

    The loss and the metric (`objectives`) take labels as class indices or as one-hot rows.
    """
    recipe = recipe or Recipe()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=recipe.learning_rate),
        loss=crossentropy,
        metrics=[accuracy],
    )
    return model
