# SPDX-License-Identifier: MIT
"""meter: the ctmeter firmware package. Runs on MicroPython (ESP32 family, unix port);
its pure modules (math, formats, storage logic) also import under CPython."""
