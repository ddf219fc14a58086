"""`python -m roamgate`."""

import sys

from roamgate.cli import main

sys.exit(main())
