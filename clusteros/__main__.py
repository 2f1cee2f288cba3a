import sys

from clusteros.cli import main

sys.exit(main())
