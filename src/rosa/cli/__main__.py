import sys

from rosa.cli import main

sys.exit(main())
