#!/usr/bin/env bash
# ./run.sh FIRST LAST SETTING MB [options]   (see ./run.sh 0 1 ca-partial 0 --help)
# Starts nodes FIRST..LAST-1 of a scenario on this host and trains along the planned paths.
# SETTING: baseline | random | non-ca-partial | ca-partial | ca-partial-zb | naive | gpipe | 1f1b |
#          zb-h1 | dualpipev | swarm | swarm-skip | ca-repair (online routing);
# MB: samples per microbatch.
# Installs what it needs on a fresh clone (through setup.sh).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m skippipe run "$@"
