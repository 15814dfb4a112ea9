import sys

from posttrain.compare import cli_main

sys.exit(cli_main())
