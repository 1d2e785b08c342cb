"""``python -m subspace_fsl.cli``: the same as ``subspace-fsl``."""

import sys

from subspace_fsl.cli import main

sys.exit(main())
