"""`python -m mxserve.worker ...`: run one worker process (see worker.main)."""
import sys

from mxserve.worker.main import main

sys.exit(main())
