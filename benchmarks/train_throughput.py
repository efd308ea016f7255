"""Training tokens/s: the seed's two models in the seed's loop against every grulm backend.

A thin wrapper around ``grulm bench`` (library: :mod:`grulm.bench`), kept here so that the
benchmarks directory lists every benchmark; the arguments are ``grulm bench``'s:

    python benchmarks/train_throughput.py                    # seed and large configs
    python benchmarks/train_throughput.py --config seed --repeats 9 --threads 2

See benchmarks/README.md for the measured table.
"""

import sys

from grulm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
