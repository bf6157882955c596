# SPDX-License-Identifier: MIT
"""The virtual board: the unmodified firmware on the MicroPython unix port, fed by the model."""
