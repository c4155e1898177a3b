import sys

from microtex.cli.main import main

sys.exit(main())
