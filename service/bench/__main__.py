"""``python -m service.bench ARGS``: the load tool without the service's CLI in front."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
