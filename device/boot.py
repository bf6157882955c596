# SPDX-License-Identifier: MIT
# Runs before main.py on every reset. Kept minimal: a mistake here could lock out the REPL.
import gc

gc.collect()
