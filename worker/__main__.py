"""`python -m worker ...`: run one worker process (see worker.main)."""
import sys

from worker.main import main

sys.exit(main())
