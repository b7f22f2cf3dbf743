"""``python -m speechbrain_ext.evaluation [OPTIONS]``: the ``speechbrain-ext evaluate [OPTIONS]``
command (:func:`speechbrain_ext.cli.run_evaluate`), kept for the scripts and docs that use it.

    python -m speechbrain_ext.evaluation --clean DIR --enhanced DIR [--noisy DIR] [--csv FILE]
    python -m speechbrain_ext.evaluation --task separation --mix DIR --sources DIR DIR --estimates DIR DIR

Authors: speechbrain-ext contributors
"""

import sys

from speechbrain_ext.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
