# SPDX-License-Identifier: MIT
import sys

from ctmeter.cli import main

sys.exit(main())
