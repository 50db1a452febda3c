"""``python -m physlink_gym``: the same as the ``physlink-gym`` command."""

import sys

from physlink_gym.cli import main

if __name__ == "__main__":
    sys.exit(main())
