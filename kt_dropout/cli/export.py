"""`kt-dropout export`: a results store's runs as one CSV table, for pandas, R or a spreadsheet.

It reads files only, so it starts no backend (`study.rows`, `storage.tables` import no Keras).
"""

from __future__ import annotations

import sys
from pathlib import Path

from kt_dropout.cli.outputs import check_output
from kt_dropout.cli.results import RESULTS_HELP, StoreCommand, open_store
from kt_dropout.errors import file_error


class Export(StoreCommand):
    name = "export"
    help = "the stored runs as CSV: one row per run, or per run and epoch"
    description = ("Writes the runs of a results store as CSV, one row per run: its key fields (configuration, "
                   "experiments, seed, epochs, precision, seeding, selection, backend, data), the verdict metric "
                   "(verdict_accuracy), best epoch and accuracies, timings, the network's and recipe's fields and "
                   "where it ran. With --epochs, one row per run and epoch: the key fields, epoch and every metric "
                   "Keras logged. To stdout unless -o names a file.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("results", metavar="RESULTS", help=RESULTS_HELP)
        parser.add_argument("--epochs", action="store_true", help="one row per run and epoch (the histories)")
        parser.add_argument("--output", "-o", metavar="FILE.csv", help="write the CSV to this file [stdout]")
        parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")

    def run(self, args) -> int:
        """Prints (or writes) the store's runs as CSV."""
        from kt_dropout.storage.atomic import write_text
        from kt_dropout.storage.tables import csv_text
        from kt_dropout.study.rows import table

        store = open_store(Path(args.results))
        output = Path(args.output) if args.output else None
        if output is not None:
            check_output(output, "--output", args.force)
        rows, columns = table(store.records(), epochs=args.epochs)
        text = csv_text(rows, columns)
        if output is None:
            sys.stdout.write(text)
            return 0
        try:
            write_text(output, text)
        except OSError as error:
            raise file_error(error, f"cannot write {output}: {error.strerror or error}") from error
        print(f"{len(rows)} row(s) written to {output}")
        return 0
