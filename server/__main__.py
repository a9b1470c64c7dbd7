import sys

from inferd.server.cli import main

sys.exit(main())
