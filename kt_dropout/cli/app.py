"""`kt-dropout`: the study from the command line.

    kt-dropout experiments                 what the post tried and claimed, and the profiles
    kt-dropout train --config conv0.2      train one configuration, write its run record
    kt-dropout search --max-trials 20      Keras Tuner search over the dropout rates
    kt-dropout reproduce batchnorm         train an experiment (resumable), decide its claims, report
    kt-dropout report kt_results           rewrite the report from stored runs
    kt-dropout status kt_results           what is done, being trained and left, with an ETA
    kt-dropout compare REF OTHER           pair two studies' runs: do their accuracies and verdicts agree?

Every error is one line on stderr, `kt-dropout <command>: error: ...`, and exit
status 2 (1 when a search ran but every trial failed). `reproduce` exits with
`REPRODUCE_EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import os
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

from tabulate import tabulate

from kt_dropout.cli.console import eprint
from kt_dropout.config import (
    DEFAULT_CHECKPOINT_EVERY,
    Recipe,
    VGGConfig,
    parse_duration,
    parse_every,
)
from kt_dropout.study.experiments import (
    CLAIMS,
    CONFIGS,
    EXPERIMENTS,
    claims_for,
    resolve_experiments,
)
from kt_dropout.study.profiles import DEFAULT_PACK_SIZE, PROFILES, get_profile
from kt_dropout.training import budget, stops
from kt_dropout.tuning.space import PARAMS, TUNER_NAMES

# What needs Keras (and so a backend) is imported inside the command that uses it: `--help`, the parser's
# errors and `experiments` answer at once, without starting TensorFlow or JAX.

PROG = "kt-dropout"
DEFAULT_OUTPUT = "kt-dropout-run.json"
DEFAULT_RESULTS = "kt_results"
STORE_FOLDER = "store"


class UsageError(Exception):
    """Bad input found after parsing: reported like an argparse error, exit status 2."""


def did_you_mean(word: str, candidates, quote: str = "'") -> str:
    """" (did you mean 'bn'?)" for the candidate closest to a misspelled `word`, else ""."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """argparse with a suggestion for a misspelled flag, choice or command (what Python 3.14's
    `suggest_on_error` does, for the Pythons before it)."""

    # argparse's message for a bad choice: "invalid choice: 'x' (choose from 'a', 'b')"; 3.12.8+ drops the
    # quotes around the choices.
    _INVALID_CHOICE = re.compile(r"invalid choice: '(?P<value>[^']*)'(?= \(choose from (?P<choices>.*)\))")

    def parse_known_args(self, args=None, namespace=None):
        """Every command takes all its arguments, so what is left over is refused here, by the command's own
        parser (its name in the error), with the flag closest to the first one that is unknown."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            unknown = next((arg.partition("=")[0] for arg in extras if arg.startswith("-")), "")
            flags = self._option_string_actions  # argparse's table of this parser's flags
            hint = did_you_mean(unknown, flags, quote="") if unknown else ""
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return namespace, extras

    def error(self, message: str):
        choice = self._INVALID_CHOICE.search(message)
        if choice:
            choices = [c.strip().strip("'") for c in choice["choices"].split(",")]
            message = message[:choice.end()] + did_you_mean(choice["value"], choices) + message[choice.end():]
        super().error(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _flag_type(parse):
    """An argparse `type` from a `config.parse_*(field, text)` parser: its error, without a field, is argparse's
    (which names the flag)."""
    def checked(text: str):
        try:
            return parse("", text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(": ")) from None

    return checked


def _every(text: str) -> str:
    """--checkpoint-every: N epochs or a duration, checked here (`config.parse_every`), kept as given."""
    _flag_type(parse_every)(text)
    return text


_duration = _flag_type(parse_duration)
def _shard(text: str) -> tuple[int, int]:
    from kt_dropout.study.shards import parse_shard

    try:
        return parse_shard("shard", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("shard: ")) from None


def _experiment(name: str) -> str:
    if name not in EXPERIMENTS:
        raise argparse.ArgumentTypeError(
            f"unknown experiment {name!r}{did_you_mean(name, EXPERIMENTS)}; known: {', '.join(EXPERIMENTS)}")
    return name


# --- shared flag groups ----------------------------------------------------------------------------


def _add_network_flags(parser: argparse.ArgumentParser) -> None:
    """The VGGConfig fields; each flag overrides the configuration named by --config (default: bn)."""
    group = parser.add_argument_group("network (VGGConfig); each flag overrides --config")
    group.add_argument("--config", choices=list(CONFIGS), metavar="NAME",
                       help="start from this named configuration of the post (see `kt-dropout experiments`); "
                            "default: bn, the post's baseline with batch norm and no dropout")
    group.add_argument("--nfilters", type=int, nargs=3, metavar="N", help="filters of the three conv blocks")
    group.add_argument("--ndense", type=int, metavar="N", help="units of each of the two dense layers")
    group.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                       help="BatchNormalization before every ReLU")
    group.add_argument("--dropout-conv", type=float, nargs=3, metavar="R",
                       help="dropout rate after every conv of each of the three blocks, in [0, 1)")
    group.add_argument("--dropout-dense", type=float, metavar="R", help="dropout rate after each dense layer")
    group.add_argument("--num-classes", type=int, metavar="N", help="size of the softmax output")
    group.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"), help="input image shape")


PRECISION_HELP = (
    "float32 (as the post) or mixed_bfloat16 (bfloat16 arithmetic, float32 weights; faster on GPUs, stored as "
    "a recipe of its own) [float32]"
)


DETERMINISTIC_HELP = (
    "deterministic kernels (TensorFlow op determinism, XLA's deterministic ops, PyTorch's deterministic "
    "algorithms), so a replay on the same GPU gives the same history; slower on GPUs, recorded in the run (its "
    "key), and unneeded on CPUs, whose runs replay exactly anyway [off]"
)


def _add_recipe_flags(parser: argparse.ArgumentParser, epochs_help: str) -> None:
    """The Recipe fields; unset ones keep the post's recipe."""
    default = Recipe()
    group = parser.add_argument_group("training recipe (Recipe)")
    group.add_argument("--learning-rate", type=float, metavar="LR",
                       help=f"Adam's learning rate [{default.learning_rate:g}]")
    group.add_argument("--batch-size", type=_positive_int, metavar="N", help=f"mini-batch size [{default.batch_size}]")
    group.add_argument("--epochs", type=_positive_int, metavar="N", help=f"{epochs_help} [{default.epochs}]")
    group.add_argument("--pixel-scale", type=float, metavar="S", help="inputs are multiplied by this [1/256]")
    group.add_argument("--selection", choices=Recipe.SELECTIONS,
                       help="pick the best epoch on the test set (test, as the post) or on a holdout split of "
                            "the training set, reporting test accuracy there (holdout) [test]")
    group.add_argument("--holdout", type=_positive_int, metavar="N",
                       help=f"size of the holdout split, with --selection holdout [{default.holdout}]")
    group.add_argument("--precision", choices=Recipe.PRECISIONS, help=PRECISION_HELP)
    group.add_argument("--deterministic", action="store_true", default=None, help=DETERMINISTIC_HELP)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="PATH",
                        help="CIFAR-10 as an .npz, the official tarball, a cifar-10-batches-py folder or an image "
                             "folder tree; default: $KT_DROPOUT_DATA, then Keras's cache, then Keras's download")
    source.add_argument("--synthetic", type=_positive_int, nargs=2, metavar=("N_TRAIN", "N_TEST"),
                        help="train on a small synthetic CIFAR-10-shaped data set instead, to try things out")
    group.add_argument("--class-names", type=lambda text: text.split(","), metavar="NAME,...",
                       help="with --data of an image folder: its class folders' names in label order, for folders "
                            "not named as CIFAR-10's classes [airplane,automobile,...,truck]")
    _add_size_flags(group)


def _add_size_flags(group) -> None:
    """--train-size, --test-size: part of the data (`first_per_class`), a study of its own."""
    for split, whole in (("train", "50,000"), ("test", "10,000")):
        group.add_argument(f"--{split}-size", type=_positive_int, metavar="N",
                           help=f"use only the first N {split} images, taken class by class in turn (balanced), "
                                f"e.g. to try a GPU setup quickly; runs on them are stored apart [all: CIFAR-10 has "
                                f"{whole}]")


def _add_checkpoint_flag(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument("--checkpoint-every", type=_every, default=DEFAULT_CHECKPOINT_EVERY, metavar="N|DURATION",
                        help=f"save an epoch checkpoint every N epochs or every DURATION (e.g. 5, 10m): {where} "
                             f"[{DEFAULT_CHECKPOINT_EVERY}]")


def _add_budget_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time-budget", type=_duration, metavar="DURATION",
                        help="stop at the last epoch boundary within DURATION (e.g. 9m, 1.5h) from the start, "
                             f"checkpoint, print what is done and left, and exit {budget.EXIT_INCOMPLETE} (incomplete: "
                             "rerun the command to continue)")


def _given(args, cls) -> dict:
    """The fields of dataclass `cls` that flags set."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}


def _config(args) -> VGGConfig:
    """The network the flags describe: --config, then every network flag given."""
    return (CONFIGS[args.config] if args.config else VGGConfig()).replace(**_given(args, VGGConfig))


def _recipe(args) -> Recipe:
    return Recipe(**_given(args, Recipe))


def _data(args, config: VGGConfig):
    """`((x_train, y_train), (x_test, y_test))` from --synthetic, --data or the standard lookup, cut to
    --train-size/--test-size, and where it came from in words, for the banner."""
    from kt_dropout.data.cifar10 import (
        cifar10_source,
        describe_subset,
        first_per_class,
        load_cifar10,
        synthetic_cifar10,
    )

    if args.synthetic:
        if args.class_names:
            raise UsageError("--class-names: names the class folders of an image folder given with --data, "
                             "not --synthetic's classes")
        n_train, n_test = args.synthetic
        whole = synthetic_cifar10(n_train, n_test, image_size=config.input_shape[0], num_classes=config.num_classes)
        source = "synthetic_cifar10 (--synthetic)"
    else:
        whole = load_cifar10(args.data, num_classes=config.num_classes, class_names=args.class_names)
        source = cifar10_source(args.data)
    data = first_per_class(whole, args.train_size, args.test_size)
    part = describe_subset(whole, data)
    return data, f"{source}, {part}" if part else source


def _config_name(config: VGGConfig) -> str:
    """The name of the post's configuration that the flags describe, whichever flags did, else "custom"."""
    return next((name for name, named in CONFIGS.items() if named == config), "custom")


# --- experiments -----------------------------------------------------------------------------------


def _config_changes(config: VGGConfig) -> str:
    default = VGGConfig()
    changes = [
        f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(VGGConfig)
        if getattr(config, f.name) != getattr(default, f.name)
    ]
    return ", ".join(changes) or "(the defaults)"


def cmd_experiments(args) -> int:
    """Prints the experiments with their configurations, the claims and the profiles."""
    print("Experiments\n")
    rows = [[e.name, e.title, f"{name}: {_config_changes(CONFIGS[name])}"] for e in EXPERIMENTS.values()
            for name in e.configs]
    print(tabulate(rows, headers=["experiment", "title", "configuration: non-default fields"]))
    print("\nClaims\n")
    print(tabulate([[c.id, c.experiment, c.min_epochs, "; ".join(map(str, c.comparisons)), c.text]
                    for c in CLAIMS.values()], headers=["claim", "experiment", "needs epochs", "comparisons", "text"]))
    print("\nProfiles (kt-dropout reproduce --profile NAME)\n")
    rows = [[p.name, p.epochs, p.seeds, ", ".join(p.experiments), ", ".join(p.claims) or "none", p.description]
            for p in PROFILES.values()]
    print(tabulate(rows, headers=["profile", "epochs", "seeds", "trains", "decides", "what for"]))
    return 0


# --- train -----------------------------------------------------------------------------------------


def _check_output(path: Path, flag: str, force: bool = True) -> None:
    """Refuses, before any training, the output file of `flag` if it is a folder, exists (unless `force`), or
    its folder is missing or cannot be written: the run's or search's result is written at the end."""
    from kt_dropout.storage.atomic import check_writable_folder

    if path.is_dir():
        raise UsageError(f"{path} is a folder; {flag} takes a file name")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such folder for the output")
    check_writable_folder(path.parent)


def _write_record(path: Path, record) -> None:
    """Writes the record's JSON whole or not at all, readable as an ordinary file (`write_text`'s temp file,
    which it renames, is private)."""
    from kt_dropout.storage.atomic import write_text

    write_text(path, json.dumps(record.to_json(), indent=1, sort_keys=True) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def checkpoint_of(output: Path) -> Path:
    """Where `kt-dropout train -o OUTPUT` keeps its epoch checkpoint until the record is written."""
    return output.with_name(output.name + ".checkpoint.npz")


def cmd_train(args) -> int:
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
    from kt_dropout.training.run import train

    config, recipe = _config(args), _recipe(args)
    output = Path(args.output)
    _check_output(output, "--output", args.force)
    time_budget = budget.TimeBudget(args.time_budget) if args.time_budget else None
    checkpointing = Checkpointing(checkpoint_of(output), **parse_every("--checkpoint-every", args.checkpoint_every),
                                  stop=time_budget and time_budget.stop, reason="time budget spent")
    with Lock(output, f"the run record {output}"):  # a second train into it is refused, not overwritten
        data, source = _data(args, config)
        print_banner(f"{PROG} train", precision=recipe.precision, data=data_line(source, data),
                     plan=plan_line(1, recipe.epochs, "run"))
        try:
            with Progress(recipe.epochs, epoch_lines=not args.verbose) as progress:
                record = train(
                    config, data, recipe=recipe, seed=args.seed, name=_config_name(config),
                    data_fingerprint=data_fingerprint(data), verbose=1 if args.verbose else 0,
                    callbacks=[progress.keras_callback()], distributed=args.data_parallel,
                    checkpointing=checkpointing,
                )
        except TrainingIncomplete as stopped:
            _print_incomplete(stopped)
            return budget.EXIT_INCOMPLETE
        _write_record(output, record)
        checkpointing.path.unlink(missing_ok=True)
    best = record.best_val_accuracy
    print(f"{record.name} seed {record.key.seed}: {record.status}" + (f" ({record.error})" if record.error else ""))
    print(f"best val_accuracy {best:.4f} at epoch {record.best_epoch}/{record.epochs_run}, "
          f"{record.seconds_per_epoch:.2f} s/epoch" if best is not None else "no finite val_accuracy")
    print(f"record written to {output}")
    return 0 if record.status == "ok" else 1


def _print_incomplete(stopped) -> None:
    """What a stopped run did and has left: epochs, the time they should take at this run's pace."""
    from statistics import median

    from kt_dropout.training.checkpoints import read_state

    seconds = read_state(stopped.checkpoint).epoch_seconds
    left = stopped.epochs - stopped.epochs_done
    pace = median(seconds[1:] or seconds)
    print(f"{stopped.reason}: {stopped.epochs_done} of {stopped.epochs} epochs done, {left} to go "
          f"(about {left * pace:.0f} s at {pace:.2f} s/epoch); checkpoint {stopped.checkpoint}")
    print("incomplete: rerun the same command to continue")


# --- search ----------------------------------------------------------------------------------------


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


def _space(items: list[tuple[str, object]]) -> dict:
    repeated = [name for name, count in Counter(name for name, _ in items).items() if count > 1]
    if repeated:
        raise UsageError(f"--space given more than once for {', '.join(repeated)}")
    return dict(items)


def cmd_search(args) -> int:
    """Runs a Keras Tuner search and prints its trials, best first."""
    from kt_dropout.training.progress import STDERR
    from kt_dropout.tuning import cluster
    from kt_dropout.tuning.search import SearchFailedError, SearchIncomplete, search

    space, base, recipe = _space(args.space), _config(args), _recipe(args)
    if args.tuner_id is not None and args.worker is None:
        raise UsageError("--tuner-id names a worker: it needs --worker")
    if args.csv:
        _check_output(Path(args.csv), "--csv")
    role = cluster.configure(args.chief, args.worker, args.tuner_id) if args.chief or args.worker else None
    data, source = (None, None) if role == "chief" else _data(args, base)  # the chief trains nothing
    try:
        result = search(
            data=data, tuner=args.tuner, max_trials=args.max_trials, space=space, base=base, recipe=recipe,
            directory=args.directory, project_name=args.project_name, overwrite=args.overwrite, seed=args.seed,
            verbose=1 if args.verbose else 0, distributed=role is not None, lost_worker_seconds=args.lost_worker_seconds,
            connect_timeout=args.connect_timeout,
            trials_per_step=args.trials_per_step, data_parallel=args.data_parallel, progress=STDERR,
            data_source=source, checkpoint_every=args.checkpoint_every,
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
        print(f"\nbest configuration: {_config_changes(result.best_config)}")
    if args.csv:
        result.to_csv(args.csv)
        print(f"trials written to {args.csv}")
    return 0


# --- reproduce -------------------------------------------------------------------------------------


EXIT_FAILED, EXIT_CONTRADICTED = 1, 3
REPRODUCE_EXIT_CODES = (
    "exit status: 0 every run succeeded and no claim the profile decides is contradicted or insufficient "
    "(supported, unresolved, or not decidable at these epochs); "
    f"{EXIT_FAILED} a run failed, or a claim the profile decides is insufficient; "
    f"{EXIT_CONTRADICTED} a claim the profile decides is contradicted (before {EXIT_FAILED}); 2 a usage error; "
    f"{budget.EXIT_INCOMPLETE} the time budget was spent, or a SIGTERM came, before the study was trained "
    "(checkpointed: rerun to continue)"
)


def cmd_reproduce(args) -> int:
    """With --devices, the same command once per device (`devices.run_per_device`); else `_reproduce`."""
    from kt_dropout.cli import devices

    if args.devices is None:
        return _with_keras(_reproduce)(args)
    if os.environ.get(devices.CHILD):
        raise UsageError(f"--devices in a process that --devices started ({devices.CHILD} is set)")
    try:
        chosen = devices.choose("--devices", args.devices)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return devices.run_per_device(devices.without_flag(args.argv, "--devices"), chosen)


def _devices(text: str):
    from kt_dropout.cli.devices import parse_devices

    try:
        return parse_devices("devices", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("devices: ")) from None


def _reproduce(args) -> int:
    """Trains what the experiments need (reusing stored runs), decides their claims, writes the report."""
    from kt_dropout.storage.atomic import check_writable_folder
    from kt_dropout.study.report import write_report
    from kt_dropout.study.runner import AcceleratorRequired, StudyIncomplete, open_study
    from kt_dropout.study.verdicts import decide_all
    from kt_dropout.training.progress import format_seconds

    time_budget = budget.TimeBudget(args.time_budget) if args.time_budget else None
    if args.no_pack and args.pack_size is not None and args.pack_size > 1:
        raise UsageError(f"--no-pack conflicts with --pack-size {args.pack_size}")
    profile = get_profile(args.profile)
    experiments = [e.name for e in resolve_experiments(args.experiments or list(profile.experiments))]
    results = Path(args.results)
    report_dir = results / f"report-{profile.name}"
    check_writable_folder(report_dir)  # before the store is made and hours of training, not after
    try:
        study = open_study(
            profile.name, results / STORE_FOLDER, data_path=args.data, epochs=args.epochs, seeds=args.seeds,
            selection=args.selection, precision=args.precision, experiments=experiments, allow_cpu=args.allow_cpu,
            pack_size=1 if args.no_pack else args.pack_size, train_size=args.train_size,
            test_size=args.test_size, deterministic=args.deterministic, shard=args.shard,
            checkpoint_every=args.checkpoint_every, time_budget=time_budget,
        )
    except AcceleratorRequired as error:
        raise UsageError(f"{error}; --allow-cpu trains here anyway") from None
    study.announce(f"{PROG} reproduce: {', '.join(experiments)}")
    try:
        records = [run for runs in study.runs(study.configs()).values() for run in runs]  # trains only what is missing
    except StudyIncomplete:
        why = stops.requested() or f"time budget spent ({format_seconds(args.time_budget)})"
        print(f"{why}: stopped at an epoch boundary, checkpoint saved")
        for line in study.remaining():
            print(f"  {line}")
        print("rerun the same command to continue")
        return budget.EXIT_INCOMPLETE
    claims = [c for name in experiments for c in claims_for(name)]
    decided = {v.claim.id: v for v in decide_all(records, [c for c in claims if c.id in profile.claims])}
    print(f"Claims ({profile.name} profile, {study.epochs} epochs, {len(study.seeds)} seeds):")
    for claim in claims:
        print(f"  {decided[claim.id].summary()}" if claim.id in decided
              else f"  {claim.id} not decided in this profile: {claim.text}")
    path = write_report(records, report_dir, experiments=experiments, profile=profile.name, data=study.data_source)
    print(f"report written to {path}")
    failed = [f"{r.name}/seed{r.key.seed}" for r in records if r.status != "ok"]
    if failed:
        eprint(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    return reproduce_exit_status(records, decided.values())


def reproduce_exit_status(records: list, verdicts) -> int:
    """`REPRODUCE_EXIT_CODES` for the study's records (`RunRecord`s) and the verdicts of the claims its profile
    decides."""
    from kt_dropout.study.verdicts import CONTRADICTED, INSUFFICIENT

    statuses = {v.status for v in verdicts}
    if CONTRADICTED in statuses:
        return EXIT_CONTRADICTED
    return EXIT_FAILED if INSUFFICIENT in statuses or any(r.status != "ok" for r in records) else 0


# --- report ----------------------------------------------------------------------------------------


def _store_root(results: Path) -> Path:
    """RESULTS itself when it is a store (holds the manifest), else RESULTS/store."""
    from kt_dropout.study.results import MANIFEST_NAME

    return results if (results / MANIFEST_NAME).is_file() else results / STORE_FOLDER


def _open_store(results: Path):
    """The `ResultStore` in a results folder (RESULTS/store) or the store folder itself."""
    from kt_dropout.study.results import MANIFEST_NAME, ResultStore

    root = _store_root(results)
    if not (root / MANIFEST_NAME).is_file():
        raise UsageError(f"{results}: neither a results folder (with {STORE_FOLDER}/) nor a results store "
                         f"(with {MANIFEST_NAME})")
    return ResultStore(root, create=False)


def _one_study(records: list, epochs: int | None) -> list:
    """The records of one study (`StudyKey`): those of --epochs, and of the study with the most runs if still
    mixed."""
    from kt_dropout.study.results import StudyKey, by_study

    if epochs is not None:
        available = sorted({r.key.epochs for r in records})
        records = [r for r in records if r.key.epochs == epochs]
        if not records:
            raise UsageError(f"no runs of {epochs} epochs; the store has runs of {available} epochs")
    studies = by_study(records)
    if len(studies) <= 1:
        return records
    chosen, runs = next(iter(studies.items()))
    eprint(f"the store mixes {len(studies)} studies ({', '.join(StudyKey._fields)}); reporting the one with "
           f"the most runs: {len(runs)} runs of {chosen.epochs} epochs on {chosen.backend}, data {chosen.data}")
    return runs


def cmd_report(args) -> int:
    """Writes report.md and its figures from the runs in a results store."""
    from kt_dropout.study.report import write_report

    results = Path(args.results)
    store = _open_store(results)
    records = store.records()
    if not records:
        raise UsageError(f"{store.root} holds no runs")
    out = Path(args.out) if args.out else store.root.parent / "report"
    path = write_report(_one_study(records, args.epochs), out, profile=args.profile, data=args.data_source)
    print(f"report written to {path}")
    return 0


def cmd_status(args) -> int:
    """Prints where the studies in a results store stand (`study.status`): as text, or as JSON with --json."""
    from kt_dropout.study.status import format_status, store_status

    document = store_status(_open_store(Path(args.results)))
    sys.stdout.write(json.dumps(document, indent=1) + "\n" if args.json else format_status(document))
    return 0


def cmd_merge(args) -> int:
    """Copies into RESULTS the runs that another results folder or store holds (e.g. one from a GPU machine)."""
    from kt_dropout.study.plans import read_plans, write_plan
    from kt_dropout.study.results import ResultStore, check_mergeable

    sources = [_open_store(Path(source)) for source in args.sources]  # all checked before RESULTS is made
    check_mergeable(sources)
    plans = [plan for source in sources for plan in read_plans(source.root)]  # for `status`; read before writing
    target = ResultStore(_store_root(Path(args.results)))
    copied = sum(target.merge(source.root) for source in sources)
    for plan in plans:
        write_plan(target.root, plan)
    print(f"{copied} run(s) merged into {target.root}; it holds {len(target)}")
    return 0


def cmd_compare(args) -> int:
    """Pairs the runs of two studies and prints, as Markdown, how their accuracies and verdicts differ."""
    from kt_dropout.study.compare import DEFAULT_CLAIMS, comparison

    claims = [c.strip() for c in args.claims.split(",") if c.strip()] if args.claims else list(DEFAULT_CLAIMS)
    reference, other = (_open_store(Path(results)).records() for results in (args.reference, args.other))
    sys.stdout.write(comparison(reference, other, claims))
    return 0


# --- parser ----------------------------------------------------------------------------------------


def _with_keras(run):
    """`run` after Keras has started quietly (`startup.start_keras`), with the environment `--deterministic` needs
    set first: every command but `experiments` uses it."""
    @functools.wraps(run)
    def with_keras(args) -> int:
        from kt_dropout.cli.startup import start_keras
        from kt_dropout.determinism import prepare_environment

        if getattr(args, "deterministic", None):  # JAX reads XLA_FLAGS once, as it starts
            prepare_environment()
        start_keras()
        return run(args)

    return with_keras


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG, description="Dropout with batch normalization in a VGG-like CNN on CIFAR-10: train, search, "
                               "reproduce the post's experiments and report on them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, help_text: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=description)
        sub.set_defaults(run=run if run in (cmd_experiments, cmd_reproduce) else _with_keras(run))
        return sub

    command("experiments", cmd_experiments, "list the post's experiments, claims and profiles",
            "Lists every experiment of the post with its configurations (name and fields that differ from the "
            "defaults), every claim (id, experiment deciding it, text) and the profiles of `reproduce`.")

    train_cmd = command("train", cmd_train, "train one configuration",
                        "Trains one configuration with the post's recipe (or the flags' changes to it) and writes "
                        "its run record as JSON: config, recipe, history, best epoch, timings, environment.")
    _add_network_flags(train_cmd)
    _add_recipe_flags(train_cmd, "epochs to train")
    _add_data_flags(train_cmd)
    train_cmd.add_argument("--seed", type=int, default=0, help="random seed of weights and shuffling [0]")
    train_cmd.add_argument("--output", "-o", default=DEFAULT_OUTPUT, metavar="FILE.json",
                           help=f"where the run record goes [{DEFAULT_OUTPUT}]")
    train_cmd.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    train_cmd.add_argument("--data-parallel", action="store_true",
                           help="train over every local GPU (keras.distribution.DataParallel on JAX, "
                                "tf.distribute.MirroredStrategy on TensorFlow); --batch-size stays the global batch")
    train_cmd.add_argument("--verbose", "-v", action="store_true",
                           help="Keras's progress bar instead of one line per epoch")
    _add_checkpoint_flag(train_cmd, "the run saves its checkpoint FILE.json.checkpoint.npz (beside --output; "
                                    "rerunning the command continues from it; deleted once the record is written)")
    _add_budget_flag(train_cmd)

    search_cmd = command("search", cmd_search, "Keras Tuner search over the dropout rates",
                         "Searches the dropout rates (or what --space tunes) of the network the network flags "
                         "describe, maximizing val_accuracy. A project already in --directory/--project-name is "
                         "resumed unless --overwrite. Prints the trials, best first.")
    search_cmd.add_argument("--tuner", choices=list(TUNER_NAMES), default="random", help="the Keras Tuner tuner [random]")
    search_cmd.add_argument("--max-trials", type=_positive_int, default=10, metavar="N",
                            help="trials to run; hyperband runs its brackets up to --epochs instead [10]")
    search_cmd.add_argument("--space", type=space_item, action="append", default=[], metavar="NAME=SPEC",
                            help="one hyperparameter, repeatable: NAME is one of "
                                 f"{', '.join(PARAMS)}; SPEC is lo:hi or lo:hi:step (a range), a,b,c (choices), "
                                 "a single value (fixed) or none (not tuned: from the network flags). "
                                 "Unnamed dropout rates search 0.0:0.5:0.1")
    search_cmd.add_argument("--directory", default="kt_dropout_search", help="Keras Tuner's folder [kt_dropout_search]")
    search_cmd.add_argument("--project-name", default="dropout_vgg", help="project within --directory [dropout_vgg]")
    search_cmd.add_argument("--overwrite", action="store_true", help="start over instead of resuming the project")
    search_cmd.add_argument("--seed", type=int, help="seeds the tuner and every trial's initial state")
    search_cmd.add_argument("--trials-per-step", type=_positive_int, default=1, metavar="K",
                            help="train K trials at once as one packed model (those sharing a shape and learning "
                                 "rate; each keeps its own weights and result); not with hyperband [1]")
    search_cmd.add_argument("--data-parallel", action="store_true",
                            help="train each trial over every local GPU (as train --data-parallel)")
    search_cmd.add_argument("--csv", metavar="FILE", help="also write the trials table as CSV")
    _add_checkpoint_flag(search_cmd, "each trial saves its checkpoint PROJECT/trial_ID/checkpoint.npz; a trial "
                                     "interrupted mid-way continues from it when the search is resumed")
    search_cmd.add_argument("--verbose", "-v", action="store_true", help="Keras Tuner's and Keras's progress output")
    cluster_flags = search_cmd.add_argument_group(
        "distributed search (Keras Tuner's chief/worker engine; every process gets the same search flags)")
    chief_or_worker = cluster_flags.add_mutually_exclusive_group()
    chief_or_worker.add_argument("--chief", metavar="HOST:PORT",
                                 help="be the chief: serve the trials at HOST:PORT until all have ended; trains nothing")
    chief_or_worker.add_argument("--worker", metavar="HOST:PORT", help="be a worker of the chief at HOST:PORT")
    cluster_flags.add_argument("--tuner-id", metavar="ID",
                               help="this worker's name; a restarted worker with the same ID resumes its unfinished "
                                    "trial at once [worker-HOSTNAME-PID]")
    cluster_flags.add_argument("--lost-worker-seconds", type=float, default=120.0, metavar="S",
                               help="on the chief: a worker silent this long has its trial given to another [120]")
    cluster_flags.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                               help="on a worker: how long each call waits for the chief; a worker with no chief at "
                                    "its address, or whose chief stopped, exits after that long [60]")
    _add_network_flags(search_cmd)
    _add_recipe_flags(search_cmd, "epochs per trial")
    _add_data_flags(search_cmd)

    reproduce = command("reproduce", cmd_reproduce, "train the post's experiments, decide its claims, report",
                        "Trains the runs the experiments need (default: the profile's), reusing every run already "
                        "in RESULTS/store, so an interrupted or repeated call resumes. Then prints each claim's "
                        "verdict and writes RESULTS/report-PROFILE/report.md with figures. " + REPRODUCE_EXIT_CODES
                        + ".")
    reproduce.add_argument("experiments", nargs="*", type=_experiment, metavar="EXPERIMENT",
                           help=f"experiments to train: {', '.join(EXPERIMENTS)} [the profile's]")
    reproduce.add_argument("--profile", choices=list(PROFILES), default="quick",
                           help="smoke: tiny networks on synthetic data; quick: 15 epochs; full: the post's "
                                "250 [quick]")
    reproduce.add_argument("--seeds", type=_positive_int, metavar="N", help="seeds per configuration [the profile's]")
    reproduce.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs per run [the profile's]")
    reproduce.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR",
                           help=f"results folder: store/ and report-PROFILE/ [{DEFAULT_RESULTS}]")
    data = reproduce.add_argument_group("data")
    data.add_argument("--data", metavar="PATH", help="CIFAR-10 location (not used by smoke) [standard lookup]")
    _add_size_flags(data)
    reproduce.add_argument("--selection", choices=Recipe.SELECTIONS, default="test",
                           help="pick the best epoch on the test set (as the post) or a holdout split [test]")
    reproduce.add_argument("--precision", choices=Recipe.PRECISIONS, default="float32", help=PRECISION_HELP)
    reproduce.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    reproduce.add_argument("--pack-size", type=_positive_int, metavar="N",
                           help=f"most runs of one shape trained together as one packed model [{DEFAULT_PACK_SIZE}]")
    reproduce.add_argument("--no-pack", action="store_true", help="train each run alone with keras fit (pack size 1)")
    reproduce.add_argument("--allow-cpu", action="store_true",
                           help="train quick or full on a machine without a GPU or TPU, which is otherwise refused "
                                "with the estimated time (hours to weeks)")
    spread = reproduce.add_argument_group("one study over several processes (all may share one RESULTS: each "
                                          "run is leased in RESULTS/store/leases/ while it trains)")
    spread.add_argument("--shard", type=_shard, metavar="I/N",
                        help="train only shard I of N (1 <= I <= N): the study's packs are planned over all of its "
                             "runs and shard I takes every N-th from the I-th, the same share on every machine "
                             "(give all shards the same flags); for a Slurm job array. Then merge and report")
    spread.add_argument("--devices", type=_devices, metavar="all|N|i,j",
                        help="run this command once per local GPU (all, the first N, or those listed), each process "
                             "pinned to its GPU (CUDA_VISIBLE_DEVICES), all into RESULTS; lines are prefixed with "
                             "the device; exits with the worst status. On a CPU an explicit list runs that many CPU "
                             "processes (pinning does nothing there)")
    _add_checkpoint_flag(reproduce, "each pack (or run) saves its checkpoint in RESULTS/store/checkpoints/ "
                                    "(rerunning the command continues from it; deleted once its runs are stored)")
    _add_budget_flag(reproduce)

    report = command("report", cmd_report, "write the report from stored runs",
                     "Writes report.md and PNG figures from the runs in a results store. When the store holds "
                     "several studies (runs differing in epochs, recipe, backend or data), --epochs picks one; "
                     "if that still leaves several, the one with the most runs is reported and a note says so.")
    report.add_argument("results", metavar="RESULTS",
                        help="a results folder (holding store/) or a results store (holding store.json)")
    report.add_argument("--out", metavar="DIR", help="where the report goes [RESULTS/report, beside the store]")
    report.add_argument("--epochs", type=_positive_int, metavar="N", help="report only the runs of N epochs")
    report.add_argument("--profile", metavar="NAME", help="the profile that trained the runs, for the header")
    report.add_argument("--data-source", metavar="TEXT",
                        help="where the data came from, for the header (runs record only its fingerprint)")

    status = command("status", cmd_status, "what a study has done, is training and has left, with an ETA",
                     "For each study trained into RESULTS (its plan, written by reproduce and the suite): per "
                     "experiment and configuration the seeds done, partial (epochs checkpointed), being trained "
                     "now (by which host and process), failed and missing; the model-epochs done and remaining; "
                     "the measured seconds per model-epoch and the time the rest takes at that speed; which "
                     "claims can be decided already, with their verdicts. Then the stored runs of every study, "
                     "planned or not. Reads files only: safe while other processes train into the store.")
    status.add_argument("results", metavar="RESULTS",
                        help="a results folder (holding store/) or a results store (holding store.json)")
    status.add_argument("--json", action="store_true",
                        help="print the same as one JSON document (keys: kt_dropout/study/status.py, README)")

    merge = command("merge", cmd_merge, "merge stored runs from other results folders",
                    "Copies into RESULTS every run that the SOURCE stores hold and RESULTS lacks (a successful run "
                    "also replaces a failed one), so runs trained on several machines make one study.")
    merge.add_argument("results", metavar="RESULTS", help="the results folder (or store) to merge into; created "
                                                          "if missing")
    merge.add_argument("sources", nargs="+", metavar="SOURCE", help="results folders or stores to copy runs from")

    compare = command("compare", cmd_compare, "pair two studies' runs: do accuracies and verdicts agree?",
                      "Pairs the successful runs of two studies by configuration name, seed, epochs and data, "
                      "whatever else differs (e.g. float32 against mixed_bfloat16), and prints as Markdown the "
                      "paired difference OTHER - REFERENCE of the accuracy per configuration and over all pairs "
                      "with 95% t intervals, then each claim decided in both on the paired runs only.")
    compare.add_argument("reference", metavar="REF", help="results folder or store of the reference study")
    compare.add_argument("other", metavar="OTHER", help="results folder or store of the study to compare with it")
    compare.add_argument("--claims", metavar="C1,C3",
                         help="claims to decide in both, comma-separated [those the quick profile's "
                              "configurations can decide]")
    return parser


# What Ctrl-C leaves, by command: runs, trials and merged runs are stored as each ends; a record at the end.
INTERRUPTED = {
    "train": "nothing was written",
    "search": "rerun the same command to resume",
    "reproduce": "rerun the same command to resume",
    "merge": "rerun the same command to resume",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the children of reproduce --devices
    stops.enable()  # SIGTERM: stop training at the next epoch boundary; Ctrl-C: at once, also on JAX
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(args.command)
        return _run(args)


def _one_line_warnings(command: str):
    """A `warnings.showwarning` that prints each warning (e.g. a bad run file the results store skips) once,
    as `kt-dropout <command>: warning: ...`, without Python's file, line and source."""
    shown = set()

    def show(message, *_):
        if str(message) not in shown:
            shown.add(str(message))
            eprint(f"{PROG} {command}: warning: {message}")

    return show


def _run(args) -> int:
    """The command, with its errors as one line and exit status 2."""
    try:
        return args.run(args)
    except KeyboardInterrupt:  # Ctrl-C: what was stored stays stored (every write is atomic)
        left = INTERRUPTED.get(args.command)
        eprint(f"{PROG} {args.command}: interrupted" + (f"; {left}" if left else ""))
        return 130
    except BrokenPipeError:  # e.g. `kt-dropout experiments | head`: not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UsageError, ValueError, OSError, ImportError) as error:  # DataError is a ValueError
        eprint(f"{PROG} {args.command}: error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
