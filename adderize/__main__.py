import sys

from adderize.cli import main

sys.exit(main())
