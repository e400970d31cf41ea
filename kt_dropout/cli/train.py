"""`kt-dropout train`: train one configuration, continuing its checkpoint, and write its run record."""

from __future__ import annotations

import json
from pathlib import Path

from kt_dropout.cli.command import PROG, Command
from kt_dropout.cli.flags import (
    add_budget_flag,
    add_checkpoint_flag,
    add_data_flags,
    add_network_flags,
    add_recipe_flags,
    add_tensorboard_flag,
    check_class_names,
    check_tensorboard,
    config_name,
    config_of,
    data_of,
    recipe_of,
)
from kt_dropout.cli.outputs import check_output
from kt_dropout.config import parse_every
from kt_dropout.training import budget, stops

DEFAULT_OUTPUT = "kt-dropout-run.json"


def checkpoint_of(output: Path) -> Path:
    """Where `kt-dropout train -o OUTPUT` keeps its epoch checkpoint until the record is written."""
    return output.with_name(output.name + ".checkpoint.npz")


def _write_record(path: Path, record) -> None:
    """Writes the record's JSON whole or not at all (`write_text`), as an ordinary file (its mode by the umask)."""
    from kt_dropout.storage.atomic import write_text

    write_text(path, json.dumps(record.to_json(), indent=1, sort_keys=True) + "\n")


def print_incomplete(stopped) -> None:
    """What a stopped run (`checkpoints.TrainingIncomplete`) did and has left: epochs, the time they should take
    at this run's pace."""
    from statistics import median

    from kt_dropout.training.checkpoints import read_state

    seconds = read_state(stopped.checkpoint).epoch_seconds
    left = stopped.epochs - stopped.epochs_done
    pace = median(seconds[1:] or seconds)
    print(f"{stopped.reason}: {stopped.epochs_done} of {stopped.epochs} epochs done, {left} to go "
          f"(about {left * pace:.0f} s at {pace:.2f} s/epoch); checkpoint {stopped.checkpoint}")
    print("incomplete: rerun the same command to continue")


def resumed_epochs(path: Path, key) -> int:
    """The epochs of the run `key` (a `RunKey`) that its checkpoint at `path` holds, for the banner and the
    progress; 0 without one that training would continue (it sets such a file aside, with a warning)."""
    from kt_dropout.training.checkpoints import CheckpointError, continuable

    try:
        return continuable(path, owner="fit", run_keys=[key.digest()], epochs=key.epochs).epochs_done
    except CheckpointError:  # none (not readable), or not this run's
        return 0


class Train(Command):
    name = "train"
    help = "train one configuration"
    description = ("Trains one configuration with the post's recipe (or the flags' changes to it) and writes its run "
                   "record as JSON: config, recipe, history, best epoch, timings, environment.")
    interrupted = "nothing was written"

    def add_arguments(self, parser) -> None:
        add_network_flags(parser)
        add_recipe_flags(parser, "epochs to train")
        add_data_flags(parser)
        parser.add_argument("--seed", type=int, default=0, help="random seed of weights and shuffling [0]")
        parser.add_argument("--output", "-o", default=DEFAULT_OUTPUT, metavar="FILE.json",
                            help=f"where the run record goes [{DEFAULT_OUTPUT}]")
        parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
        parser.add_argument("--data-parallel", action="store_true",
                            help="train over every local GPU (keras.distribution.DataParallel on JAX, "
                                 "tf.distribute.MirroredStrategy on TensorFlow); --batch-size stays the global batch")
        parser.add_argument("--verbose", "-v", action="store_true",
                            help="Keras's progress bar instead of one line per epoch")
        add_checkpoint_flag(parser, "the run saves its checkpoint FILE.json.checkpoint.npz (beside --output; "
                                    "rerunning the command continues from it; deleted once the record is written)")
        add_budget_flag(parser)
        add_tensorboard_flag(parser, "the run (DIR/CONFIG/seedSEED)")

    def check(self, args) -> None:
        config_of(args), recipe_of(args)  # a bad field: its ConfigError
        check_class_names(args)
        check_output(Path(args.output), "--output", args.force)
        check_tensorboard(args)

    def run(self, args) -> int:
        """Trains one configuration (continuing its checkpoint, if any) and writes its run record as JSON."""
        from kt_dropout.data.cifar10 import data_fingerprint
        from kt_dropout.storage.locks import Lock
        from kt_dropout.training.checkpoints import Checkpointing, TrainingIncomplete
        from kt_dropout.training.progress import (
            Progress,
            data_line,
            plan_line,
            print_banner,
        )
        from kt_dropout.training.recording import run_key
        from kt_dropout.training.run import train

        config, recipe = config_of(args), recipe_of(args)
        output = Path(args.output)
        time_budget = budget.TimeBudget(args.time_budget) if args.time_budget else None
        checkpointing = Checkpointing(checkpoint_of(output), **parse_every("--checkpoint-every", args.checkpoint_every),
                                      stop=time_budget and time_budget.stop, reason="time budget spent")
        with Lock(output, f"the run record {output}"):  # a second train into it is refused, not overwritten
            data, source = data_of(args, config)
            fingerprint = data_fingerprint(data)
            done = resumed_epochs(checkpointing.path, run_key(config, recipe, args.seed, recipe.epochs, fingerprint))
            print_banner(f"{PROG} train", precision=recipe.precision, data=data_line(source, data),
                         plan=plan_line(1, recipe.epochs, "run"),
                         resumed=f"from epoch {done}, its checkpoint {checkpointing.path}: {recipe.epochs - done} "
                                 "epochs to train" if done else None)
            with stops.training():  # a SIGTERM from the model's build until the record is written: a request
                try:
                    with Progress(recipe.epochs, epoch_lines=not args.verbose, done=done) as progress:
                        record = train(
                            config, data, recipe=recipe, seed=args.seed, name=config_name(config),
                            data_fingerprint=fingerprint, verbose=1 if args.verbose else 0,
                            callbacks=[progress.keras_callback()], distributed=args.data_parallel,
                            checkpointing=checkpointing, tensorboard=args.tensorboard,
                        )
                except TrainingIncomplete as stopped:
                    print_incomplete(stopped)
                    return budget.EXIT_INCOMPLETE
                _write_record(output, record)
                checkpointing.path.unlink(missing_ok=True)
        best = record.best_val_accuracy
        print(f"{record.name} seed {record.key.seed}: {record.status}" + (f" ({record.error})" if record.error else ""))
        print(f"best val_accuracy {best:.4f} at epoch {record.best_epoch}/{record.epochs_run}, "
              f"{record.seconds_per_epoch:.2f} s/epoch" if best is not None else "no finite val_accuracy")
        print(f"record written to {output}")
        return 0 if record.status == "ok" else 1
