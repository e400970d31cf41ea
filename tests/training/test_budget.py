"""A time budget counts from the command's start: the process's, before its imports and data."""

import subprocess
import sys


def test_a_time_budget_counts_from_the_start_of_its_process():
    """A second spent before the budget module is even imported (as Keras's import and the data's loading are
    before a command makes its budget) is spent from the budget."""
    code = ("import time; time.sleep(1)\n"
            "from kt_dropout.training.budget import TimeBudget\n"
            "budget = TimeBudget(60)\n"
            "print(budget.elapsed(), budget.remaining())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    elapsed, remaining = map(float, result.stdout.split())
    assert 1.0 <= elapsed < 30 and abs(elapsed + remaining - 60) < 0.1
