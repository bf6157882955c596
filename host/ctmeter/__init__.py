# SPDX-License-Identifier: MIT
"""ctmeter: the CPython toolkit for the ctmeter energy meter (flash, deploy, sim, serve...)."""

__version__ = "0.1.0"
