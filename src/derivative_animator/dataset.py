"""`python -m derivative_animator.dataset`: build the curriculum dataset (conf/make_data.yaml).
The builder is `data.dataset`; this is the documented command's path."""

import sys

from derivative_animator.data.dataset import main

if __name__ == "__main__":
    from derivative_animator.cli_support import hydra_entry

    sys.exit(hydra_entry(main, "make_data"))
