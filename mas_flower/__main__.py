"""`python -m mas_flower ...` is the `mas-flower` command (`mas_flower.tools.cli`)."""

import sys

from mas_flower.tools.cli import main

sys.exit(main())
