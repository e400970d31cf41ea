"""`kt-dropout reproduce`: train the post's experiments (resumable, shardable, one process per GPU), decide
their claims, write the report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from kt_dropout.cli.command import PROG, RESUMABLE, Command
from kt_dropout.cli.console import eprint
from kt_dropout.cli.flags import (
    DETERMINISTIC_HELP,
    PRECISION_HELP,
    add_budget_flag,
    add_checkpoint_flag,
    add_size_flags,
    add_tensorboard_flag,
    check_tensorboard,
)
from kt_dropout.cli.parser import did_you_mean, flag_type, positive_int
from kt_dropout.cli.results import STORE_FOLDER, open_store
from kt_dropout.config import Recipe
from kt_dropout.errors import UsageError
from kt_dropout.study.experiments import EXPERIMENTS, claims_for
from kt_dropout.study.profiles import DEFAULT_MAX_SEEDS, DEFAULT_PACK_SIZE, PROFILES
from kt_dropout.study.shards import parse_shard
from kt_dropout.training import budget, stops

DEFAULT_RESULTS = "kt_results"

EXIT_FAILED, EXIT_CONTRADICTED = 1, 3
REPRODUCE_EXIT_CODES = (
    "exit status: 0 every run succeeded and every claim the profile decides is supported, or in early training "
    "(runs shorter than the post's), as the suite passes or skips them; "
    f"{EXIT_FAILED} a run failed, a configuration did not learn, or a claim the profile decides is insufficient or "
    "not reproduced (unresolved at the end of its seeds); "
    f"{EXIT_CONTRADICTED} a claim the profile decides is contradicted (before {EXIT_FAILED}); 2 a usage error; "
    f"{budget.EXIT_INCOMPLETE} the time budget was spent, or a SIGTERM came, before the study was trained "
    "(checkpointed: rerun to continue), or other processes still hold runs of it when this one has nothing else "
    "to train, or an --until-decided round waits for runs they hold (rerun once they end)"
)


def _experiment(name: str) -> str:
    if name not in EXPERIMENTS:
        raise argparse.ArgumentTypeError(
            f"unknown experiment {name!r}{did_you_mean(name, EXPERIMENTS)}; known: {', '.join(EXPERIMENTS)}")
    return name


def _seeds(text: str) -> int | str:
    return text if text == "auto" else positive_int(text)


def _devices(text: str):
    from kt_dropout.cli.devices import parse_devices

    return flag_type(parse_devices)(text)


class Reproduce(Command):
    name = "reproduce"
    help = "train the post's experiments, decide its claims, report"
    description = ("Trains the runs the experiments need (default: the profile's), reusing every run already in "
                   "RESULTS/store, so an interrupted or repeated call resumes. Then prints each claim's verdict and "
                   "writes RESULTS/report-PROFILE/report.md with figures. " + REPRODUCE_EXIT_CODES + ".")
    interrupted = RESUMABLE

    def add_arguments(self, parser) -> None:
        parser.add_argument("experiments", nargs="*", type=_experiment, metavar="EXPERIMENT",
                            help=f"experiments to train: {', '.join(EXPERIMENTS)} [the profile's]")
        parser.add_argument("--profile", choices=list(PROFILES),
                            help="smoke: tiny networks on synthetic data; quick: 15 epochs; full: the post's "
                                 "250 [quick on a GPU or TPU, smoke without]")
        parser.add_argument("--seeds", type=_seeds, metavar="N|auto",
                            help="seeds per configuration, or auto: planned per claim for 80%% power from a pooled "
                                 "variance (see --max-seeds) [the profile's]")
        parser.add_argument("--epochs", type=positive_int, metavar="N", help="epochs per run [the profile's]")
        parser.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR",
                            help=f"results folder: store/ and report-PROFILE/ [{DEFAULT_RESULTS}]")
        data = parser.add_argument_group("data")
        data.add_argument("--data", metavar="PATH", help="CIFAR-10 location (not used by smoke) [standard lookup]")
        add_size_flags(data)
        parser.add_argument("--selection", choices=Recipe.SELECTIONS, default="test",
                            help="pick the best epoch on the test set (as the post) or a holdout split [test]")
        parser.add_argument("--precision", choices=Recipe.PRECISIONS, default="float32", help=PRECISION_HELP)
        parser.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
        parser.add_argument("--pack-size", type=positive_int, metavar="N",
                            help=f"most runs of one shape trained together as one packed model [{DEFAULT_PACK_SIZE}]")
        parser.add_argument("--no-pack", action="store_true", help="train each run alone with keras fit (pack size 1)")
        parser.add_argument("--allow-cpu", action="store_true",
                            help="train quick or full on a machine without a GPU or TPU, which is otherwise refused "
                                 "with the estimated time (hours to weeks)")
        spread = parser.add_argument_group("one study over several processes (all may share one RESULTS: each "
                                           "run is leased in RESULTS/store/leases/ while it trains)")
        spread.add_argument("--shard", type=flag_type(parse_shard), metavar="I/N",
                            help="train only shard I of N (1 <= I <= N): the study's packs are planned over all of "
                                 "its runs and shard I takes every N-th from the I-th, the same share on every "
                                 "machine (give all shards the same flags); for a Slurm job array. Then merge and "
                                 "report")
        spread.add_argument("--devices", type=_devices, metavar="all|N|i,j",
                            help="run this command once per local GPU (all, the first N, or those listed), each "
                                 "process pinned to its GPU (CUDA_VISIBLE_DEVICES), all into RESULTS; lines are "
                                 "prefixed with the device; exits with the worst status. On a CPU an explicit list "
                                 "runs that many CPU processes (pinning does nothing there)")
        power = parser.add_argument_group(
            "seeds planned by power (--seeds auto: each claim's seeds, the MDD they give, model-epochs and GPU time "
            "are shown before training and by kt-dropout status)")
        power.add_argument("--max-seeds", type=positive_int, metavar="N",
                           help=f"most seeds per configuration; claims not powerable within them are named "
                                f"[{DEFAULT_MAX_SEEDS}]")
        power.add_argument("--variance-from", action="append", metavar="STORE",
                           help="plan from the pooled variance of this results store's runs (repeatable) [the "
                                "study's own store; a claim with no runs there first trains a pilot of 3 seeds]")
        power.add_argument("--until-decided", action="store_true",
                           help="train in rounds (3 seeds, then twice as many for the configurations of claims "
                                "still undecided, up to their planned seeds) and stop each claim once supported or "
                                "contradicted (group-sequential, O'Brien-Fleming-type spending); implies --seeds auto")
        add_checkpoint_flag(parser, "each pack (or run) saves its checkpoint in RESULTS/store/checkpoints/ "
                                    "(rerunning the command continues from it; deleted once its runs are stored)")
        add_budget_flag(parser)
        add_tensorboard_flag(parser, "every run trained (DIR/CONFIG/seedSEED; those of a pack each their own)")

    def check(self, args) -> None:
        """Conflicting flags, a --variance-from that is not a store and a report folder that could not be written
        are refused before anything starts (a backend, the --devices children, hours of training)."""
        from kt_dropout.storage.atomic import check_writable_folder

        if args.no_pack and args.pack_size is not None and args.pack_size > 1:
            raise UsageError(f"--no-pack conflicts with --pack-size {args.pack_size}")
        if args.until_decided and args.seeds not in (None, "auto"):
            raise UsageError(f"--until-decided plans its seeds: --seeds {args.seeds} conflicts with it "
                             "(use --max-seeds)")
        for flag, value in (("--max-seeds", args.max_seeds), ("--variance-from", args.variance_from)):
            if value is not None and not _auto(args):
                raise UsageError(f"{flag} plans seeds: it needs --seeds auto or --until-decided")
        for store in args.variance_from or ():
            open_store(Path(store))
        # Without --profile the report's folder is known once the backend has looked for a GPU: its parent here.
        check_writable_folder(_report_dir(args, args.profile) if args.profile else Path(args.results))
        check_tensorboard(args)

    def needs_backend(self, args) -> bool:
        return args.devices is None  # with --devices the children train; the parent must not hold the GPUs

    def run(self, args) -> int:
        """With --devices, the same command once per device (`devices.run_per_device`); else `_reproduce`."""
        from kt_dropout.cli import devices

        if args.devices is None:
            return _reproduce(args)
        if os.environ.get(devices.CHILD):
            raise UsageError(f"--devices in a process that --devices started ({devices.CHILD} is set)")
        chosen = devices.choose("--devices", args.devices)
        return devices.run_per_device(devices.without_flag(args.argv, "--devices"), chosen)


def _auto(args) -> bool:
    """Whether the seeds are planned by power (--seeds auto, --until-decided)."""
    return args.seeds == "auto" or args.until_decided


def _report_dir(args, profile: str) -> Path:
    return Path(args.results) / f"report-{profile}"


def _reproduce(args) -> int:
    """Trains what the experiments need (reusing stored runs), decides their claims, writes the report."""
    from kt_dropout.study.outcomes import claim_outcome, sequential_outcome
    from kt_dropout.study.report import write_report
    from kt_dropout.study.runner import AcceleratorRequired, RunsHeld, StudyIncomplete, open_study
    from kt_dropout.study.settings import StudySettings
    from kt_dropout.study.verdicts import decide_all
    from kt_dropout.training.progress import format_seconds

    auto = _auto(args)
    variance = [r for store in args.variance_from or () for r in open_store(Path(store)).records()]
    results = Path(args.results)
    settings = StudySettings(
        args.profile or _default_profile(), results / STORE_FOLDER, experiments=args.experiments, epochs=args.epochs,
        seeds=None if auto else args.seeds,
        data_path=args.data, train_size=args.train_size, test_size=args.test_size, selection=args.selection,
        precision=args.precision, deterministic=args.deterministic, pack_size=1 if args.no_pack else args.pack_size,
        shard=args.shard, checkpoint_every=args.checkpoint_every, allow_cpu=args.allow_cpu,
        tensorboard=args.tensorboard,
        time_budget=budget.TimeBudget(args.time_budget) if args.time_budget else None,
    )
    profile, experiments = settings.profile, list(settings.experiments)
    report_dir = _report_dir(args, profile.name)
    try:
        study = open_study(settings)
    except AcceleratorRequired as error:
        raise UsageError(f"{error}; --allow-cpu trains here anyway") from None
    if auto:
        from kt_dropout.study import planned, rounds

        def plan(study):
            return rounds.plan_study(study, max_seeds=args.max_seeds or DEFAULT_MAX_SEEDS, variance_records=variance,
                                     variance=", ".join(["the study's own store", *(args.variance_from or ())]))

        study, design = plan(study)
    study.announce(f"{PROG} reproduce: {', '.join(experiments)}")
    if auto:
        planned.print_design(design, study.progress)
    try:
        if args.until_decided:
            sequential, study = rounds.run_rounds(study, design, print, plan)
            records = study.records()
        else:
            records = [run for runs in study.runs(settings.configs()).values() for run in runs]  # only what is missing
    except RunsHeld:
        print("nothing else to train here: other processes hold the rest of the study (named above)")
        for line in study.remaining():
            print(f"  {line}")
        print("rerun the same command once they end: it trains what they leave, or decides the claims and "
              "writes the report")
        return budget.EXIT_INCOMPLETE
    except StudyIncomplete as stopped:
        spent = settings.time_budget
        why = stops.requested() or (f"time budget spent ({format_seconds(spent.elapsed())} of "
                                    f"{format_seconds(spent.seconds)} since the command started)")
        print(f"{why}: stopped at an epoch boundary, checkpoint saved")
        for line in getattr(stopped, "study", study).remaining():
            print(f"  {line}")
        print("rerun the same command to continue")
        return budget.EXIT_INCOMPLETE
    claims = [c for name in experiments for c in claims_for(name)]
    if args.until_decided:
        decided = {v.claim.id: v for v in sequential}
    else:
        decided = {v.claim.id: v for v in decide_all(records, [c for c in claims if c.id in profile.claims])}
    seeds = "seeds planned by power" if auto else f"{settings.seeds} seeds"
    print(f"Claims ({profile.name} profile, {settings.epochs} epochs, {seeds}):")
    for claim in claims:
        print(f"  {decided[claim.id].summary()}" if claim.id in decided
              else f"  {claim.id} not decided in this profile: {claim.text}")
    path = write_report(records, report_dir, experiments=experiments, profile=profile.name, data=study.data_source)
    print(f"report written to {path}")
    failed = [f"{r.name}/seed{r.key.seed}" for r in records if r.status != "ok"]
    if failed:
        eprint(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    if args.until_decided and any(v.status == rounds.CONTINUE for v in sequential):
        print("a round is waiting for runs that other processes hold or that failed: rerun to continue")
        return budget.EXIT_INCOMPLETE
    judge = sequential_outcome if args.until_decided else claim_outcome
    outcomes = [judge(v, profile) for v in decided.values() if v.claim.id in profile.claims]
    return reproduce_exit_status(records, outcomes, profile)


def _default_profile() -> str:
    """quick where a GPU or TPU trains; on a CPU, where quick takes hours, the smoke study, said so."""
    from kt_dropout.training.distribution import accelerators

    if accelerators():
        return "quick"
    eprint(f"{PROG} reproduce: no GPU or TPU here: the smoke profile (tiny networks on synthetic data, nothing to "
           "download: a machinery check that decides nothing); --profile quick trains the post's networks on "
           "CIFAR-10 (on a GPU)")
    return "smoke"


def reproduce_exit_status(records: list, outcomes, profile) -> int:
    """`REPRODUCE_EXIT_CODES` for the study's records (`RunRecord`s) and the suite's outcomes
    (`study.outcomes.Outcome`) of the claims its profile decides: the command fails where the suite would."""
    from kt_dropout.study.outcomes import FAIL, not_learned
    from kt_dropout.study.verdicts import CONTRADICTED, group_by_name

    failing = {o.category for o in outcomes if o.action == FAIL}
    if CONTRADICTED in failing:
        return EXIT_CONTRADICTED
    stuck = not_learned(group_by_name(records), profile)
    if stuck:
        eprint(stuck)
    return EXIT_FAILED if failing or stuck or any(r.status != "ok" for r in records) else 0
