"""Packed training must be K separate trainings, only faster."""

import copy

import keras
import numpy as np
import pytest

from kt_dropout.config import Recipe, VGGConfig
from kt_dropout.model import build_compiled, build_model
from kt_dropout.packing.model import (
    CONV_IMPLEMENTATIONS,
    GroupDropout,
    PackedConv2D,
    build_packed_model,
    load_member,
    member_weights,
    pack_weights,
)
from kt_dropout.packing import trainer as trainer_module
from kt_dropout.packing.trainer import Member, PackTrainer, plan_packs, train_pack
from kt_dropout.training import checkpoints
from kt_dropout.training.checkpoints import Checkpointing, TrainingIncomplete
from kt_dropout.training.resumable import EpochOrder

TINY = VGGConfig(nfilters=(4, 8, 8), ndense=16)


def _data(n_train=192, n_test=64, seed=0):
    rng = np.random.default_rng(seed)
    return (
        (rng.integers(0, 256, (n_train, 32, 32, 3), dtype="uint8"), rng.integers(0, 10, n_train)),
        (rng.integers(0, 256, (n_test, 32, 32, 3), dtype="uint8"), rng.integers(0, 10, n_test)),
    )


def _train_separately(member: Member, data, recipe: Recipe, epochs: int) -> keras.Model:
    """What `training.train` does, on the batches it trains on (`resumable.EpochOrder`: the (seed, epoch) order
    of every training), from raw images and class indices, as the pack gets them; without the best epoch's
    weights restored at the end; seeded as the recipe says."""
    (x, y), _ = data
    keras.utils.set_random_seed(member.seed)
    model = build_compiled(member.config, recipe, member.seed)
    batches = EpochOrder(x, y, recipe.batch_size, member.seed)
    model.fit(batches, epochs=epochs, shuffle=False, verbose=0, callbacks=[batches.epoch_callback()])
    return model


@pytest.mark.parametrize("implementation", CONV_IMPLEMENTATIONS)
def test_packed_forward_pass_equals_separate_models(implementation):
    configs = [TINY, TINY.replace(dropout_conv=(0.2, 0.0, 0.5)), TINY.replace(dropout_dense=0.5)]
    members = [build_model(c) for c in configs]
    packed = build_packed_model(configs, [0, 1, 0], conv_implementation=implementation)
    pack_weights(packed, members)
    (x, _), _ = _data(n_train=8)
    x2 = np.concatenate([x, x[::-1]], axis=-1)
    out = keras.ops.convert_to_numpy(packed(x2, training=False))
    assert out.shape == (8, 3, 10)
    inputs = [x, x[::-1], x]
    for k, model in enumerate(members):
        expected = keras.ops.convert_to_numpy(model(inputs[k], training=False))
        np.testing.assert_allclose(out[:, k], expected, rtol=1e-5, atol=1e-6)


def test_member_weights_round_trip():
    configs = [TINY, TINY]
    members = [build_model(c) for c in configs]
    packed = build_packed_model(configs)
    pack_weights(packed, members)
    restored = load_member(build_model(TINY), member_weights(packed, 1, 2))
    for a, b in zip(restored.get_weights(), members[1].get_weights()):
        np.testing.assert_array_equal(a, b)


def _train_both(config, recipe, data, epochs=2, **options):
    members = [Member("a", config, 1), Member("b", config, 2), Member("c", config, 1)]
    trainer = PackTrainer(members, data, recipe, **options)
    for _ in range(epochs):
        trainer.train_epoch()
    return [(trainer.member_weights(k), _train_separately(m, data, recipe, epochs)) for k, m in enumerate(members)]


@pytest.mark.parametrize("implementation", CONV_IMPLEMENTATIONS)
def test_packed_training_without_dropout_gives_the_weights_of_separate_training(implementation):
    """The same math, to float32 round-off. Under the initial weights of "global" seeding, with which these
    tolerances were set: from per-layer seeding's start, on JAX, round-off grows past them after two epochs
    (one weight of 144 off by 1.2e-5 with grouped convolutions, most of block1_conv1 by up to 7e-4 with
    im2col; on TensorFlow all three stay within). That both paths start alike under either scheme is
    `test_a_pack_member_starts_from_the_weights_of_the_same_run_alone`."""
    recipe = Recipe(batch_size=32, seeding="global")
    runs = _train_both(TINY.replace(batchnorm=False), recipe, _data(), conv_implementation=implementation)
    for packed, separate in runs:
        for layer in separate.layers:
            for got, want in zip(packed.get(layer.name, []), layer.get_weights()):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=layer.name)


def test_packed_training_with_batchnorm_gives_the_predictions_of_separate_training():
    """With BatchNorm, a conv bias has a zero gradient in exact arithmetic (BN subtracts the mean),
    so Adam turns float round-off into lr-sized steps on it; the bias is cancelled by BN, so the
    networks' function is what must agree."""
    data = _data()
    _, (x_test, _) = data
    for k, (packed, separate) in enumerate(_train_both(TINY, Recipe(batch_size=32), data)):
        model = load_member(build_model(TINY), packed)
        np.testing.assert_allclose(model.predict(x_test, verbose=0), separate.predict(x_test, verbose=0), atol=2e-3)


@pytest.mark.parametrize("seeding", ["per-layer", "global"])
def test_a_pack_member_starts_from_the_weights_of_the_same_run_alone(seeding):
    """Under either seeding: every layer of every member, whatever else is in the pack."""
    members = [Member("bn", TINY, 5), Member("conv0.2", TINY.replace(dropout_conv=(0.2, 0.2, 0.2)), 5),
               Member("dense0.5", TINY.replace(dropout_dense=0.5), 6)]
    recipe = Recipe(batch_size=32, seeding=seeding)
    trainer = PackTrainer(members, _data(n_train=32, n_test=8), recipe)
    for k, member in enumerate(members):
        keras.utils.set_random_seed(member.seed)  # as `training.train` builds the run
        alone = build_compiled(member.config, recipe, member.seed)
        packed = trainer.member_weights(k)
        for layer in alone.layers:
            for got, want in zip(packed.get(layer.name, []), layer.get_weights(), strict=True):
                np.testing.assert_array_equal(got, want, err_msg=f"{member.name} {layer.name}")


def test_a_members_dropout_masks_depend_on_its_seed_and_layer_not_on_the_pack():
    """Under "per-layer" seeding each member's channels draw from the seed its layer has alone: a member seeded
    5 drops the same channels at the same step in any pack, and differently from a member seeded 6."""
    conv = TINY.replace(dropout_conv=(0.2, 0.2, 0.2))

    def mask(seeds: list[int], member: int) -> np.ndarray:
        layer = build_packed_model([conv] * len(seeds), member_seeds=seeds).get_layer("block1_conv1_dropout")
        out = keras.ops.convert_to_numpy(layer(np.ones((4, 8, 8, 4 * len(seeds)), "float32"), training=True))
        return out[..., 4 * member : 4 * (member + 1)]

    alone = mask([5], 0)
    np.testing.assert_array_equal(mask([6, 5], 1), alone)
    np.testing.assert_array_equal(mask([6, 6, 5], 2), alone)
    assert not np.array_equal(mask([6, 5], 0), alone)


def test_group_dropout_drops_each_group_at_its_rate():
    layer = GroupDropout([0.0] * 500 + [0.2] * 500 + [0.5] * 500, seed=3)
    out = keras.ops.convert_to_numpy(layer(np.ones((400, 1500), "float32"), training=True))
    for lo, rate in ((0, 0.0), (500, 0.2), (1000, 0.5)):
        group = out[:, lo : lo + 500]
        assert abs((group == 0).mean() - rate) < 0.01
        np.testing.assert_allclose(group[group != 0], 1 / (1 - rate), rtol=1e-6)
    assert np.array_equal(keras.ops.convert_to_numpy(layer(np.ones((2, 1500), "float32"))), np.ones((2, 1500)))


def test_group_dropout_in_bfloat16_drops_what_float32_drops():
    """The mask and the scale come from float32 noise and rates whatever the compute dtype: bfloat16 noise
    (128 values) would drop 20.3% for a rate of 0.2."""
    rates = [0.1] * 300 + [0.2] * 300 + [0.5] * 300
    x = np.random.default_rng(0).integers(32, 128, (200, 900)).astype("float32") / 64  # exact in bfloat16
    f32 = keras.ops.convert_to_numpy(GroupDropout(rates, seed=3)(x, training=True))
    layer = GroupDropout(rates, seed=3, dtype="mixed_bfloat16")
    bf16 = keras.ops.convert_to_numpy(keras.ops.cast(layer(x, training=True), "float32"))
    np.testing.assert_array_equal(bf16 == 0, f32 == 0)
    np.testing.assert_allclose(bf16, f32, rtol=2**-8)  # one bfloat16 rounding of the float32 result


def test_plan_packs_separates_shapes_and_balances_sizes():
    wide = VGGConfig(ndense=1024)
    members = [Member(f"n{i}", VGGConfig(), i) for i in range(5)] + [Member("w", wide, 0)]
    packs = plan_packs(members, max_pack_size=4)
    assert sorted(len(p) for p in packs) == [1, 2, 3]
    for pack in packs:
        assert len({m.config.shape_key for m in pack}) == 1
    with pytest.raises(ValueError, match="max_pack_size"):
        plan_packs(members, 0)


def test_packed_conv_refuses_unknown_settings_by_name():
    with pytest.raises(ValueError, match="conv_implementation: must be one of"):
        build_packed_model([TINY], conv_implementation="winograd")
    with pytest.raises(ValueError, match="implementation: must be one of"):
        PackedConv2D(2, 4, implementation="grouped")
    with pytest.raises(ValueError, match="padding: must be"):
        PackedConv2D(2, 4, padding="causal")


def test_packed_conv_in_bfloat16_keeps_float32_weights():
    layer = PackedConv2D(2, 4, "valid", "shifts", dtype="mixed_bfloat16")
    out = layer(np.ones((1, 5, 5, 6), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16" and tuple(out.shape) == (1, 3, 3, 8)
    assert layer.kernel.dtype == "float32" and tuple(layer.kernel.shape) == (3, 3, 3, 8)


def test_mixed_shapes_in_one_pack_are_refused():
    with pytest.raises(ValueError, match="share nfilters"):
        build_packed_model([TINY, TINY.replace(ndense=32)])


def test_train_pack_records_each_member():
    data = _data()
    members = [Member("bn", TINY, 0), Member("conv", TINY.replace(dropout_conv=(0.5, 0.5, 0.5)), 0)]
    records = train_pack(members, data, recipe=Recipe(batch_size=64), epochs=2, data_fingerprint="fp")
    assert [r.name for r in records] == ["bn", "conv"]
    for r in records:
        assert r.status == "ok" and r.pack_size == 2 and r.epochs_run == 2
        assert len(r.history["val_accuracy"]) == 2 and 1 <= r.best_epoch <= 2
        assert r.best_val_accuracy == max(r.history["val_accuracy"])


def test_a_member_whose_validation_loss_diverges_fails_alone(tmp_path, monkeypatch, read_tensorboard):
    """Member 0's BatchNorm statistics made NaN (what blown-up ones look like): training uses each batch's own
    statistics, so its training loss stays finite, but its validation loss is NaN; member 1 trains on. Each
    member's TensorBoard run holds its record's history: member 0's ends at epoch 1."""

    class Diverging(PackTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for layer in self.model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    variance = np.array(layer.moving_variance)
                    variance[: len(variance) // 2] = np.nan  # the first of the two members' equal groups of channels
                    layer.moving_variance.assign(variance)

    monkeypatch.setattr(trainer_module, "PackTrainer", Diverging)
    first, second = train_pack([Member("a", TINY, 0), Member("b", TINY.replace(dropout_dense=0.5), 1)], _data(64, 32),
                               recipe=Recipe(batch_size=32), epochs=2, tensorboard=tmp_path)
    assert np.isfinite(first.history["loss"]).all() and np.isnan(first.history["val_loss"]).all()
    assert first.epochs_run == 1 and first.status == "failed"
    assert first.error == "val_loss became nan in epoch 1; training was stopped there"
    assert np.isfinite(second.history["val_loss"]).all() and second.epochs_run == 2 and second.status == "ok"
    runs = read_tensorboard(tmp_path)
    assert sorted(runs) == [".", "a/seed0", "b/seed1"]
    for record in (first, second):
        run = runs[f"{record.name}/seed{record.key.seed}"]
        expected = {name: [(epoch, pytest.approx(value)) for epoch, value in enumerate(values, 1) if np.isfinite(value)]
                    for name, values in record.history.items()}
        expected["learning_rate"] = [(epoch, pytest.approx(1e-3)) for epoch in range(1, record.epochs_run + 1)]
        assert run["scalars"] == {name: points for name, points in expected.items() if points}  # a's val_loss: none
        assert run["hparams"]["dropout_dense"] == record.key.config.dropout_dense


def test_one_hot_labels_train_a_pack_as_class_indices_do():
    (x, y), (x_test, y_test) = _data(n_train=64, n_test=32)
    one_hot = ((x, keras.utils.to_categorical(y, 10)), (x_test, keras.utils.to_categorical(y_test, 10)))
    members = [Member("a", TINY, 0)]
    runs = [train_pack(members, data, recipe=Recipe(batch_size=32), epochs=1)[0] for data in (_data(64, 32), one_hot)]
    assert runs[0].history == runs[1].history


def test_train_pack_holdout_mode_scores_the_test_set():
    records = train_pack(
        [Member("bn", TINY, 0)], _data(), recipe=Recipe(selection="holdout", holdout=64), epochs=1
    )
    assert records[0].test_accuracy is not None
    assert len(records[0].history["test_accuracy"]) == 1


def _weights(trainer):
    return [np.array(v) for v in trainer.model.get_weights()]


def test_steps_per_execution_trains_to_the_same_weights():
    """Several steps per call are a loop around the same step (JAX: the same jitted step in a Python loop;
    TensorFlow: a tf.while_loop around it), so the weights are bit for bit those of one step per call --
    here with dropout, BatchNorm, two seeds, a last execution of 2 steps and a last batch of 8 images."""
    members = [Member("drop", TINY.replace(dropout_conv=(0.2, 0.2, 0.2), dropout_dense=0.5), 1), Member("bn", TINY, 2)]
    data = _data(n_train=168, n_test=40)
    one, four = (
        PackTrainer(members, data, Recipe(batch_size=32), steps_per_execution=n, device_data=False) for n in (1, 4)
    )
    logs_one, logs_four = one.train_epoch(), four.train_epoch()
    assert four.model.steps_per_execution == 4
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_array_equal(logs_four[key], logs_one[key], err_msg=key)
    for got, want in zip(_weights(four), _weights(one)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="epochs on the device need the JAX backend")
def test_epochs_on_the_device_train_as_fit_does():
    """Images kept on the device and an epoch as one `lax.scan` over the model's `train_step` must be
    `fit`'s epoch: the same weights, Adam moments, dropout masks and metrics -- here with dropout, two
    seeds and a last batch of 8 images, over two epochs. Float32 round-off differs (XLA fuses the step
    differently inside the scan), so equal means within round-off. No BatchNorm: it leaves the conv
    biases a zero gradient whose round-off Adam turns into lr-sized steps."""
    config = TINY.replace(batchnorm=False)
    members = [Member("drop", config.replace(dropout_conv=(0.2, 0.2, 0.2), dropout_dense=0.5), 1),
               Member("plain", config, 2)]
    data = _data(n_train=168, n_test=40)
    host, device = (PackTrainer(members, data, Recipe(batch_size=32), device_data=d) for d in (False, True))
    assert device.device_data and not host.device_data
    for _ in range(2):
        logs_host, logs_device = host.train_epoch(), device.train_epoch()
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(logs_device[key], logs_host[key], rtol=1e-4, err_msg=key)
    assert device.model.optimizer.iterations.numpy() == host.model.optimizer.iterations.numpy() == 12
    for variable, reference in zip(device.model.optimizer.variables, host.model.optimizer.variables):
        np.testing.assert_allclose(np.array(variable.value), np.array(reference.value), rtol=1e-3, atol=1e-8)
    for got, want in zip(_weights(device), _weights(host)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_pack_stopped_and_resumed_ends_as_one_that_ran_through(tmp_path):
    """Stopped after epoch 1 (checkpoint saved, `TrainingIncomplete`), then resumed by the trainer that ran 3
    epochs straight (so every variable and history must come from the checkpoint, and the data order from the
    epoch), saving after epoch 2: the same histories and weights, bit for bit -- with dropout, BatchNorm and two
    seeds' orders;
    fed from the host on TensorFlow, held on the device on JAX."""
    members = [Member("drop", TINY.replace(dropout_conv=(0.2, 0.2, 0.2), dropout_dense=0.5), 1), Member("bn", TINY, 2)]
    data, recipe = _data(n_train=48, n_test=16), Recipe(batch_size=32)
    options = {"data_fingerprint": "fp", "conv_implementation": "im2col"}  # TensorFlow's grouped convs are slow
    trainer = PackTrainer(members, data, recipe, **options)
    trainer.train(3)
    straight, weights = copy.deepcopy(trainer.histories), _weights(trainer)
    path = tmp_path / "pack.npz"
    stopped = PackTrainer(members, data, recipe, **options)
    with pytest.raises(TrainingIncomplete, match="budget: 1 of 3 epochs done"):
        stopped.train(3, checkpointing=Checkpointing(path, every_seconds=None, stop=lambda s: True, reason="budget"))
    epochs = []
    seconds = trainer.train(3, lambda epoch, logs: epochs.append(epoch), Checkpointing(path, every_epochs=1))
    assert epochs == [2, 3] and len(seconds) == 3
    assert trainer.histories == straight
    for got, want in zip(_weights(trainer), weights):
        np.testing.assert_array_equal(got, want)
    with pytest.warns(RuntimeWarning, match=r"pack.npz: the checkpoint of other runs \(drop, bn, 3 epochs\).*; set "
                                            r"aside as pack\.npz\.damaged, training from scratch$"):
        assert len(stopped.train(4, checkpointing=Checkpointing(path, every_seconds=None))) == 4
    assert not path.exists() and checkpoints.read_state(tmp_path / "pack.npz.damaged").epochs == 3


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the JAX backend keeps images on the device")
def test_epochs_on_the_device_are_refused_off_jax():
    with pytest.raises(ValueError, match="device_data: needs the JAX backend"):
        PackTrainer([Member("bn", TINY, 0)], _data(n_train=64, n_test=32), Recipe(), device_data=True)


def test_bfloat16_pack_with_several_steps_per_call_reports_each_members_own_metrics():
    """With a learning rate too small to move a weight and no dropout or BatchNorm, training-mode outputs
    are inference outputs: each member's training metrics over the epoch (its own seed, its own data
    order, executions of 4 steps and a partial last batch) must equal its scores on the same images."""
    config = TINY.replace(batchnorm=False)
    members = [Member("a", config, 1), Member("b", config, 2), Member("c", config, 1)]
    (x, y), _ = _data(n_train=200)
    recipe = Recipe(batch_size=32, learning_rate=1e-30, precision="mixed_bfloat16")
    trainer = PackTrainer(members, ((x, y), (x, y)), recipe, steps_per_execution=4)
    assert trainer.model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    layer = trainer.model.get_layer("predictions")
    kernel, bias = layer.get_weights()
    # Pull members apart (even "a" and "c", the same run): member k leans towards class k by 2k.
    layer.set_weights([kernel, bias + np.diag([0.0, 2.0, 4.0, 0, 0, 0, 0, 0, 0, 0])[:3]])
    before = _weights(trainer)
    logs = trainer.train_epoch()
    for got, want in zip(_weights(trainer), before):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-20)  # zero biases move by ~1e-30
    probabilities = trainer.model.predict(trainer.x_val, verbose=0)
    assert probabilities.dtype == np.float32 and probabilities.shape == (200, 3, 10)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert np.min(np.diff(logs["loss"])) > 0.2
    # bfloat16 convolutions at batch 32 (training) and 1024 (scoring) may round differently.
    np.testing.assert_allclose(logs["loss"], logs["val_loss"], rtol=1e-3)
    np.testing.assert_allclose(logs["accuracy"], logs["val_accuracy"], atol=2 / 200)


def test_bfloat16_pack_learns_with_float32_outputs():
    from kt_dropout.data.cifar10 import synthetic_cifar10

    members = [Member("bn", TINY, 0), Member("conv", TINY.replace(dropout_conv=(0.2, 0.2, 0.2)), 1)]
    trainer = PackTrainer(members, synthetic_cifar10(256, 64), Recipe(batch_size=32, precision="mixed_bfloat16"))
    losses = [trainer.train_epoch()["loss"] for _ in range(3)]
    assert np.all(np.isfinite(losses)) and np.all(losses[-1] < losses[0] - 0.1), losses
    probabilities = trainer.model.predict(trainer.x_val, verbose=0)
    assert probabilities.dtype == np.float32 and np.all(np.isfinite(probabilities))
    for k in range(2):
        weights = trainer.member_weights(k)
        assert all(w.dtype == np.float32 and np.all(np.isfinite(w)) for ws in weights.values() for w in ws)


@pytest.mark.slow
def test_train_pack_learns(learnable):
    """Each member of a pack learns (two more epochs than `train` gets: the pack's members learn slower on TF)."""
    members = [Member("a", learnable.config, 0), Member("b", learnable.config.replace(dropout_dense=0.2), 1)]
    records = train_pack(members, learnable.data, recipe=learnable.recipe, epochs=learnable.epochs + 2)
    for record in records:
        assert record.status == "ok" and record.best_val_accuracy >= learnable.floor, record.history["val_accuracy"]
