"""``python -m posttrain`` == ``posttrain`` (the deepspeed launcher's ``--module`` needs this)."""
import sys

from posttrain.cli import main

sys.exit(main())
