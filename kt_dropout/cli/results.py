"""The commands that read results stores: `report`, `status`, `merge` and `compare`.

They read and copy files only, so they start no backend: the modules they use (`study.results`, `study.plans`,
`study.status`, `study.report`, `study.compare`, `training.record`, `training.checkpoints`) import no Keras.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kt_dropout.cli.command import RESUMABLE, Command
from kt_dropout.cli.console import eprint
from kt_dropout.cli.parser import positive_int
from kt_dropout.errors import UsageError

STORE_FOLDER = "store"  # where a results folder (`reproduce --results`) keeps its store
RESULTS_HELP = "a results folder (holding store/) or a results store (holding store.json)"


def _store_root(results: Path) -> Path:
    """RESULTS itself when it is a store (holds the manifest), else RESULTS/store."""
    from kt_dropout.study.results import MANIFEST_NAME

    return results if (results / MANIFEST_NAME).is_file() else results / STORE_FOLDER


def open_store(results: Path):
    """The `ResultStore` in a results folder (RESULTS/store) or the store folder itself."""
    from kt_dropout.study.results import MANIFEST_NAME, ResultStore

    root = _store_root(results)
    if not (root / MANIFEST_NAME).is_file():
        raise UsageError(f"{results}: neither a results folder (with {STORE_FOLDER}/) nor a results store "
                         f"(with {MANIFEST_NAME})")
    return ResultStore(root, create=False)


def one_study(records: list, epochs: int | None) -> list:
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


class StoreCommand(Command):
    """A command that reads (or copies) results stores: it needs no backend."""

    def needs_backend(self, args) -> bool:
        return False


class Report(StoreCommand):
    name = "report"
    help = "write the report from stored runs"
    description = ("Writes report.md and PNG figures from the runs in a results store. When the store holds several "
                   "studies (runs differing in epochs, recipe, backend or data), --epochs picks one; if that still "
                   "leaves several, the one with the most runs is reported and a note says so.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("results", metavar="RESULTS", help=RESULTS_HELP)
        parser.add_argument("--out", metavar="DIR", help="where the report goes [RESULTS/report, beside the store]")
        parser.add_argument("--epochs", type=positive_int, metavar="N", help="report only the runs of N epochs")
        parser.add_argument("--profile", metavar="NAME", help="the profile that trained the runs, for the header")
        parser.add_argument("--data-source", metavar="TEXT",
                            help="where the data came from, for the header (runs record only its fingerprint)")

    def run(self, args) -> int:
        """Writes report.md and its figures from the runs in a results store."""
        from kt_dropout.study.report import write_report

        store = open_store(Path(args.results))
        records = store.records()
        if not records:
            raise UsageError(f"{store.root} holds no runs")
        out = Path(args.out) if args.out else store.root.parent / "report"
        path = write_report(one_study(records, args.epochs), out, profile=args.profile, data=args.data_source)
        print(f"report written to {path}")
        return 0


class Status(StoreCommand):
    name = "status"
    help = "what a study has done, is training and has left, with an ETA"
    description = ("For each study trained into RESULTS (its plan, written by reproduce and the suite): per "
                   "experiment and configuration the seeds done, partial (epochs checkpointed), being trained now "
                   "(by which host and process), failed and missing; the model-epochs done and remaining; the "
                   "measured seconds per model-epoch and the time the rest takes at that speed; which claims can be "
                   "decided already, with their verdicts. Then the stored runs of every study, planned or not. Reads "
                   "files only: safe while other processes train into the store.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("results", metavar="RESULTS", help=RESULTS_HELP)
        parser.add_argument("--json", action="store_true",
                            help="print the same as one JSON document (keys: kt_dropout/study/status.py, README)")

    def run(self, args) -> int:
        """Prints where the studies in a results store stand (`study.status`): as text, or as JSON with --json."""
        from kt_dropout.study.status import format_status, store_status

        document = store_status(open_store(Path(args.results)))
        sys.stdout.write(json.dumps(document, indent=1) + "\n" if args.json else format_status(document))
        return 0


class Merge(StoreCommand):
    name = "merge"
    help = "merge stored runs from other results folders"
    description = ("Copies into RESULTS every run that the SOURCE stores hold and RESULTS lacks (a successful run "
                   "also replaces a failed one), so runs trained on several machines make one study.")
    interrupted = RESUMABLE

    def add_arguments(self, parser) -> None:
        parser.add_argument("results", metavar="RESULTS",
                            help="the results folder (or store) to merge into; created if missing")
        parser.add_argument("sources", nargs="+", metavar="SOURCE", help="results folders or stores to copy runs from")

    def run(self, args) -> int:
        """Copies into RESULTS the runs that another results folder or store holds (e.g. one from a GPU machine)."""
        from kt_dropout.study.plans import read_plans, write_plan
        from kt_dropout.study.results import ResultStore, check_mergeable

        sources = [open_store(Path(source)) for source in args.sources]  # all checked before RESULTS is made
        check_mergeable(sources)
        plans = [plan for source in sources for plan in read_plans(source.root)]  # for `status`; read before writing
        target = ResultStore(_store_root(Path(args.results)))
        copied = sum(target.merge(source.root) for source in sources)
        for plan in plans:
            write_plan(target.root, plan)
        print(f"{copied} run(s) merged into {target.root}; it holds {len(target)}")
        return 0


class Compare(StoreCommand):
    name = "compare"
    help = "pair two studies' runs: do accuracies and verdicts agree?"
    description = ("Pairs the successful runs of two studies by configuration name, seed, epochs and data, whatever "
                   "else differs (e.g. float32 against mixed_bfloat16), and prints as Markdown the paired difference "
                   "OTHER - REFERENCE of the accuracy per configuration and over all pairs with 95% t intervals (a "
                   "note says why a number is missing), then each claim decided in both on the paired runs only.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("reference", metavar="REF", help="results folder or store of the reference study")
        parser.add_argument("other", metavar="OTHER", help="results folder or store of the study to compare with it")
        parser.add_argument("--claims", metavar="C1,C3",
                            help="claims to decide in both, comma-separated [those the quick profile's "
                                 "configurations can decide]")

    def run(self, args) -> int:
        """Pairs the runs of two studies and prints, as Markdown, how their accuracies and verdicts differ."""
        from kt_dropout.study.compare import DEFAULT_CLAIMS, comparison

        claims = [c.strip() for c in args.claims.split(",") if c.strip()] if args.claims else list(DEFAULT_CLAIMS)
        reference, other = (open_store(Path(results)).records() for results in (args.reference, args.other))
        sys.stdout.write(comparison(reference, other, claims))
        return 0
