"""`python -m kt_dropout.cli`, as the `kt-dropout` script (and `--devices`, which starts one per GPU)."""

import sys

from kt_dropout.cli.app import main

sys.exit(main())
