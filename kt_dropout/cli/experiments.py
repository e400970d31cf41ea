"""`kt-dropout experiments`: what the post tried and claimed, and the profiles of `reproduce`."""

from __future__ import annotations

from tabulate import tabulate

from kt_dropout.cli.command import Command
from kt_dropout.cli.flags import config_changes
from kt_dropout.study.experiments import CLAIMS, CONFIGS, EXPERIMENTS, POST_EPOCHS
from kt_dropout.study.profiles import PROFILES


class Experiments(Command):
    name = "experiments"
    help = "list the post's experiments, claims and profiles"
    description = ("Lists every experiment of the post with its configurations (name and fields that differ from "
                   "the defaults), every claim (id, experiment deciding it, text) and the profiles of `reproduce`.")

    def needs_backend(self, args) -> bool:
        return False  # tables of constants

    def run(self, args) -> int:
        """Prints the experiments with their configurations, the claims and the profiles."""
        print("Experiments\n")
        rows = [[e.name, e.title, f"{name}: {config_changes(CONFIGS[name])}"] for e in EXPERIMENTS.values()
                for name in e.configs]
        print(tabulate(rows, headers=["experiment", "title", "configuration: non-default fields"]))
        print("\nClaims\n")
        print(tabulate([[c.id, c.experiment, c.min_epochs, "; ".join(map(str, c.comparisons)), c.text]
                        for c in CLAIMS.values()],
                       headers=["claim", "experiment", "decided at epochs", "comparisons", "text"]))
        print("\nProfiles (kt-dropout reproduce --profile NAME)\n")
        rows = [[p.name, p.epochs, p.seeds, ", ".join(p.experiments), ", ".join(p.claims) or "none", p.description]
                for p in PROFILES.values()]
        print(tabulate(rows, headers=["profile", "epochs", "seeds", "trains",
                                      f"its claims (decided at {POST_EPOCHS} epochs)", "what for"]))
        return 0
