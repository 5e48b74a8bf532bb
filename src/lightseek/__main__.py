"""`python -m lightseek ...` (and `torchrun ... -m lightseek train ...`)."""

import sys

from lightseek.cli import main

sys.exit(main())
