import sys

from voxseg.cli.main import main

sys.exit(main())
