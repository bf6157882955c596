# SPDX-License-Identifier: MIT
# The meter starts here on every hard reset (a soft reset from mpremote's raw REPL skips it).
from meter.app import main

main()
