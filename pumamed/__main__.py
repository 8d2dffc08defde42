import sys

from pumamed.cli import main

sys.exit(main())
