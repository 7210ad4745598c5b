#!/bin/sh
# One command for the codec/strategy experiment (issue 4, item 7); see run_experiment.py --help.
#   bench/experiment/run_experiment.sh                       # full: alpha 0.5 and 0.1, 5 rounds x 30 steps
#   bench/experiment/run_experiment.sh --alphas 0.5 --rounds 3 --local-steps 10
# Needs the built binaries (build/cli/fedge etc.; --fedge/--bin-dir to pick others), the model
# (scripts/fetch-model.sh) and Debian's wordnet-base.
set -e
exec python3 "$(dirname "$0")/run_experiment.py" "$@"
