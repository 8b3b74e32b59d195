"""`python -m mxserve.worker.broker`: the broker (configured by MXSERVE_* variables)."""
import sys

from mxserve.worker.broker.loop import main

sys.exit(main())
