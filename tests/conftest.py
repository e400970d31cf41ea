"""Fixtures that tests in several folders share."""

import pytest


def _read_tensorboard(folder) -> dict:
    """What TensorBoard reads from `folder`: {run: {"scalars": {tag: [(step, value), ...]}, "hparams": {name:
    value}}}, and under "." the experiment's {"hparams": [names], "metrics": [tags]}."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util.tensor_util import make_ndarray

    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(folder))
    multiplexer.Reload()
    runs = {}
    for run in multiplexer.Runs():
        hparams = multiplexer.GetAccumulator(run).PluginTagToContent("hparams")
        if "_hparams_/experiment" in hparams:
            experiment = metadata.parse_experiment_plugin_data(hparams["_hparams_/experiment"])
            runs[run] = {"hparams": [info.name for info in experiment.hparam_infos],
                         "metrics": [info.name.tag for info in experiment.metric_infos]}
            continue
        session = metadata.parse_session_start_info_plugin_data(hparams["_hparams_/session_start_info"])
        scalars = {tag: [(event.step, float(make_ndarray(event.tensor_proto))) for event in
                         multiplexer.Tensors(run, tag)]
                   for tag in multiplexer.GetAccumulator(run).Tags()["tensors"] if not tag.startswith("_hparams_/")}
        runs[run] = {"scalars": scalars, "hparams": {name: getattr(value, value.WhichOneof("kind"))
                                                     for name, value in session.hparams.items()}}
    return runs


@pytest.fixture
def read_tensorboard():
    """`_read_tensorboard`: the runs of a TensorBoard folder, as TensorBoard's own reader gives them."""
    return _read_tensorboard
