import sys

from imgserve.cli import main

sys.exit(main())
