"""`python -m roamgate_connect`."""

import sys

from roamgate_connect.cli import main

sys.exit(main())
