"""`python -m crossvit_keras SUBCOMMAND ...`: the `crossvit-keras` command line from a checkout."""

import sys

from crossvit_keras.cli import main

sys.exit(main(prog="python -m crossvit_keras"))
