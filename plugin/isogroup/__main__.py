import sys

from isogroup.cli.main import main

sys.exit(main())
