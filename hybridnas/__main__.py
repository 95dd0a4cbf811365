import sys

from hybridnas.cli import main

sys.exit(main())
