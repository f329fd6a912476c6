"""``python -m wsclient.cli``: the same as the ``wsclient`` command."""

import sys

from wsclient.cli import main

sys.exit(main())
