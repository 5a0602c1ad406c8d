import sys

from medgemma_desktop.cli import main

sys.exit(main())
