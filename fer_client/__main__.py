"""``python -m fer_client URL SOURCE ...``: see ``fer_client.cli``."""

import sys

from fer_client.cli import main

sys.exit(main())
