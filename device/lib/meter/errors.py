# SPDX-License-Identifier: MIT
"""The meter's own error types, defined once in a small module that stays loaded.

The modules that raise them re-export them under their usual names (`from meter.config
import ConfigError` keeps working). They live here because much of the firmware is loaded
for one job and dropped after it (meter.modules): a module imported again defines its
classes again, and an `except ConfigError` holding the first copy would miss an error
raised by the second. The console answers these with their message (APP_ERRORS); any other
exception from a command is an internal error.
"""


class ConfigError(ValueError):
    """A config value (or file) that breaks a rule; the message names the key and the rule."""


class CalibrationError(ValueError):
    """Calibration parameters that are out of range or malformed."""


class EnergyError(ValueError):
    """An energy counter value or state that cannot be right."""


class MeterError(ValueError):
    """Metering set up with impossible parameters."""


class PersistError(Exception):
    """The counter state could not be written (the in-memory state is kept)."""


class OutboxError(ValueError):
    """A record the outbox refuses (too long, not one line) or could not store."""


APP_ERRORS = (ConfigError, CalibrationError, EnergyError, MeterError, PersistError,
              OutboxError)
