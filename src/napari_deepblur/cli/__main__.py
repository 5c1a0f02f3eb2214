"""``python -m napari_deepblur.cli …``: the ``deepblur`` command."""

import sys

from . import main

sys.exit(main())
