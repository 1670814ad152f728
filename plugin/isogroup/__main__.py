import sys

from isogroup.cli import main

sys.exit(main())
