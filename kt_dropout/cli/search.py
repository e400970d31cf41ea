"""`kt-dropout search`: a Keras Tuner search over the dropout rates, alone or as a chief or worker."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

from kt_dropout.cli.command import PROG, RESUMABLE, Command
from kt_dropout.cli.console import eprint
from kt_dropout.cli.flags import (
    add_checkpoint_flag,
    add_data_flags,
    add_network_flags,
    add_recipe_flags,
    add_tensorboard_flag,
    check_class_names,
    check_tensorboard,
    config_changes,
    config_of,
    data_of,
    recipe_of,
)
from kt_dropout.cli.outputs import check_output
from kt_dropout.cli.parser import did_you_mean, positive_int
from kt_dropout.errors import UsageError
from kt_dropout.training import budget
from kt_dropout.tuning.space import PARAMS, TUNER_NAMES


def _value(text: str):
    """One value of a --space spec: a boolean, an int, or a float."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(lowered)
    except ValueError:
        pass
    try:
        return float(lowered)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or true/false") from None


def space_item(text: str) -> tuple[str, object]:
    """NAME=SPEC: `lo:hi[:step]` a range, `a,b,c` choices, `v` a fixed value, `none` not tuned."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=SPEC, got {text!r}")
    if name not in PARAMS:
        raise argparse.ArgumentTypeError(
            f"unknown hyperparameter {name!r}{did_you_mean(name, PARAMS)}; known: {', '.join(PARAMS)}")
    if spec.strip().lower() == "none":
        return name, None
    if ":" in spec:
        return name, tuple(_value(part) for part in spec.split(":"))
    if "," in spec:
        return name, [_value(part) for part in spec.split(",")]
    return name, _value(spec)


def space_of(items: list[tuple[str, object]]) -> dict:
    """The search space of the --space flags given, each hyperparameter once."""
    repeated = [name for name, count in Counter(name for name, _ in items).items() if count > 1]
    if repeated:
        raise UsageError(f"--space given more than once for {', '.join(repeated)}")
    return dict(items)


class Search(Command):
    name = "search"
    help = "Keras Tuner search over the dropout rates"
    description = ("Searches the dropout rates (or what --space tunes) of the network the network flags describe, "
                   "maximizing val_accuracy. A project already in --directory/--project-name is resumed unless "
                   "--overwrite. Prints the trials, best first.")
    interrupted = RESUMABLE

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tuner", choices=list(TUNER_NAMES), default="random",
                            help="the Keras Tuner tuner [random]")
        parser.add_argument("--max-trials", type=positive_int, default=10, metavar="N",
                            help="trials to run; hyperband runs its brackets up to --epochs instead [10]")
        parser.add_argument("--space", type=space_item, action="append", default=[], metavar="NAME=SPEC",
                            help="one hyperparameter, repeatable: NAME is one of "
                                 f"{', '.join(PARAMS)}; SPEC is lo:hi or lo:hi:step (a range), a,b,c (choices), "
                                 "a single value (fixed) or none (not tuned: from the network flags). "
                                 "Unnamed dropout rates search 0.0:0.5:0.1")
        parser.add_argument("--directory", default="kt_dropout_search", help="Keras Tuner's folder [kt_dropout_search]")
        parser.add_argument("--project-name", default="dropout_vgg", help="project within --directory [dropout_vgg]")
        parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming the project")
        parser.add_argument("--seed", type=int, help="seeds the tuner and every trial's initial state")
        parser.add_argument("--trials-per-step", type=positive_int, default=1, metavar="K",
                            help="train K trials at once as one packed model (those sharing a shape and learning "
                                 "rate; each keeps its own weights and result); with hyperband, the trials of a "
                                 "bracket's round [1]")
        parser.add_argument("--data-parallel", action="store_true",
                            help="train each trial over every local GPU (as train --data-parallel)")
        parser.add_argument("--csv", metavar="FILE", help="also write the trials table as CSV")
        add_checkpoint_flag(parser, "each trial saves its checkpoint PROJECT/trial_ID/checkpoint.npz; a trial "
                                    "interrupted mid-way continues from it when the search is resumed")
        add_tensorboard_flag(parser, "every trial (DIR/trial_ID; those of a pack each their own)")
        parser.add_argument("--verbose", "-v", action="store_true", help="Keras Tuner's and Keras's progress output")
        cluster_flags = parser.add_argument_group(
            "distributed search (Keras Tuner's chief/worker engine; every process gets the same search flags)")
        chief_or_worker = cluster_flags.add_mutually_exclusive_group()
        chief_or_worker.add_argument("--chief", metavar="HOST:PORT",
                                     help="be the chief: serve the trials at HOST:PORT until all have ended; trains "
                                          "nothing")
        chief_or_worker.add_argument("--worker", metavar="HOST:PORT", help="be a worker of the chief at HOST:PORT")
        cluster_flags.add_argument("--tuner-id", metavar="ID",
                                   help="this worker's name; a restarted worker with the same ID resumes its "
                                        "unfinished trial at once [worker-HOSTNAME-PID]")
        cluster_flags.add_argument("--lost-worker-seconds", type=float, default=120.0, metavar="S",
                                   help="on the chief: a worker silent this long has its trial given to another [120]")
        cluster_flags.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                                   help="on a worker: how long each call waits for the chief; a worker with no chief "
                                        "at its address, or whose chief stopped, exits after that long [60]")
        add_network_flags(parser)
        add_recipe_flags(parser, "epochs per trial")
        add_data_flags(parser)

    def check(self, args) -> None:
        space_of(args.space), config_of(args), recipe_of(args)  # a bad field: its ConfigError
        if args.tuner_id is not None and args.worker is None:
            raise UsageError("--tuner-id names a worker: it needs --worker")
        check_class_names(args)
        if args.csv:
            check_output(Path(args.csv), "--csv")
        if not args.chief:  # the chief trains nothing
            check_tensorboard(args)

    def run(self, args) -> int:
        """Runs a Keras Tuner search and prints its trials, best first."""
        from kt_dropout.training.progress import STDERR
        from kt_dropout.tuning import cluster
        from kt_dropout.tuning.search import SearchFailedError, SearchIncomplete, search

        space, base, recipe = space_of(args.space), config_of(args), recipe_of(args)
        tensorboard = None if args.chief else args.tensorboard  # the chief trains nothing
        role = cluster.configure(args.chief, args.worker, args.tuner_id) if args.chief or args.worker else None
        data, source = (None, None) if role == "chief" else data_of(args, base)  # the chief trains nothing
        try:
            result = search(
                data=data, tuner=args.tuner, max_trials=args.max_trials, space=space, base=base, recipe=recipe,
                directory=args.directory, project_name=args.project_name, overwrite=args.overwrite, seed=args.seed,
                verbose=1 if args.verbose else 0, distributed=role is not None,
                lost_worker_seconds=args.lost_worker_seconds, connect_timeout=args.connect_timeout,
                trials_per_step=args.trials_per_step, data_parallel=args.data_parallel, progress=STDERR,
                data_source=source, checkpoint_every=args.checkpoint_every, tensorboard=tensorboard,
            )
        except SearchFailedError as error:
            lines = str(error).splitlines()
            eprint(f"{PROG} search: {lines[0]} {lines[-1].strip() if len(lines) > 1 else ''}".rstrip())
            return 1
        except SearchIncomplete as stopped:
            print(f"{stopped}\nincomplete: rerun the same command to continue")
            return budget.EXIT_INCOMPLETE
        if role == "worker":
            print(f"worker {os.environ[cluster.ENV_TUNER_ID]}: {len(result.trials)} trials run and reported")
        print(result)  # the table, and a tie for the best if there is one
        if result.best_config is not None:
            print(f"\nbest configuration: {config_changes(result.best_config)}")
        if args.csv:
            result.to_csv(args.csv)
            print(f"trials written to {args.csv}")
        return 0
