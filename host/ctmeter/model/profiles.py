# SPDX-License-Identifier: MIT
"""Sensor profiles: one JSON file per sensor in calibration/profiles/, read by one loader.

    load_profile("sct013-030") -> SensorProfile
    profile_names() -> ["sct013-000", ...]

A profile is the nominal data of a sensor type (rating, output type, turns or volts per unit,
recommended burden, typical ratio error and phase lead with their unit-to-unit spread, core
saturation). The model draws an individual unit from it; the firmware and the calibration code
use the nominal values only.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from ctmeter.paths import CALIBRATION

PROFILE_DIR = CALIBRATION / "profiles"
FORMAT = 1


class ProfileError(ValueError):
    """A sensor profile is missing or malformed."""


@dataclass(frozen=True)
class SensorProfile:
    name: str
    title: str
    measures: str  # "current" or "voltage" (what the primary is)
    output: str  # "current" (needs a burden) or "voltage"
    rating: float  # rated primary rms (A or V)
    unit: str  # "A" or "V"
    turns: float
    recommended_burden_ohm: float | None
    internal_burden_ohm: float | None
    volts_per_unit: float | None  # output V rms per primary unit rms (voltage output)
    ratio_error_pct: float
    ratio_tolerance_pct: float
    phase_lead_deg: float
    phase_tolerance_deg: float
    saturation_peak: float  # primary peak (A or V) where the core saturates
    bias: str  # "divider" (board bias divider) or "module" (the module biases its output)
    notes: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def nominal_volts_per_unit(self, burden_ohm=None):
        """Output volts per primary unit, as printed on the part (no individual errors)."""
        if self.output == "current":
            burden = self.recommended_burden_ohm if burden_ohm is None else burden_ohm
            if burden is None or burden <= 0:
                raise ProfileError(f"{self.name}: a current-output sensor needs a burden resistor")
            return burden / self.turns
        if burden_ohm is not None:
            raise ProfileError(f"{self.name} has a voltage output: it takes no burden resistor")
        return self.volts_per_unit


_REQUIRED = {
    "name": str, "title": str, "measures": str, "output": str, "rating": (int, float),
    "unit": str, "turns": (int, float), "ratio_error_pct": (int, float),
    "ratio_tolerance_pct": (int, float), "phase_lead_deg": (int, float),
    "phase_tolerance_deg": (int, float), "saturation_peak": (int, float), "bias": str,
}
_OPTIONAL_NUM = ("recommended_burden_ohm", "internal_burden_ohm", "volts_per_unit")


def profile_from_dict(data, source="<dict>"):
    """Validate a profile dict and build a SensorProfile; ProfileError says what is wrong."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a JSON object")
    if data.get("format") != FORMAT:
        raise ProfileError(f"{source}: format must be {FORMAT}, got {data.get('format')!r}")
    for key, kind in _REQUIRED.items():
        if key not in data:
            raise ProfileError(f"{source}: missing key {key!r}")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise ProfileError(f"{source}: {key!r} has the wrong type ({data[key]!r})")
    for key in _OPTIONAL_NUM:
        value = data.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise ProfileError(f"{source}: {key!r} must be a positive number or null")
    if data["measures"] not in ("current", "voltage"):
        raise ProfileError(f"{source}: measures must be 'current' or 'voltage'")
    if data["output"] not in ("current", "voltage"):
        raise ProfileError(f"{source}: output must be 'current' or 'voltage'")
    if data["bias"] not in ("divider", "module"):
        raise ProfileError(f"{source}: bias must be 'divider' or 'module'")
    for key in ("rating", "turns", "saturation_peak"):
        if data[key] <= 0:
            raise ProfileError(f"{source}: {key!r} must be positive")
    if data["output"] == "voltage" and not data.get("volts_per_unit"):
        raise ProfileError(f"{source}: a voltage-output sensor needs volts_per_unit")
    known = set(_REQUIRED) | set(_OPTIONAL_NUM) | {"format", "notes"}
    unknown = set(data) - known
    if unknown:
        raise ProfileError(f"{source}: unknown keys {sorted(unknown)}")
    return SensorProfile(
        name=data["name"], title=data["title"], measures=data["measures"],
        output=data["output"], rating=float(data["rating"]), unit=data["unit"],
        turns=float(data["turns"]),
        recommended_burden_ohm=_opt(data.get("recommended_burden_ohm")),
        internal_burden_ohm=_opt(data.get("internal_burden_ohm")),
        volts_per_unit=_opt(data.get("volts_per_unit")),
        ratio_error_pct=float(data["ratio_error_pct"]),
        ratio_tolerance_pct=float(data["ratio_tolerance_pct"]),
        phase_lead_deg=float(data["phase_lead_deg"]),
        phase_tolerance_deg=float(data["phase_tolerance_deg"]),
        saturation_peak=float(data["saturation_peak"]), bias=data["bias"],
        notes=data.get("notes", ""), raw=dict(data),
    )


def _opt(value):
    return None if value is None else float(value)


def profile_names(directory=None):
    """Names of the profiles in calibration/profiles/ (file stems), sorted."""
    directory = Path(directory) if directory else PROFILE_DIR
    return sorted(p.stem for p in directory.glob("*.json"))


_cache = {}


def load_profile(name, directory=None):
    """The SensorProfile called `name` (e.g. "sct013-000"); a SensorProfile passes through."""
    if isinstance(name, SensorProfile):
        return name
    directory = Path(directory) if directory else PROFILE_DIR
    key = (str(directory), name)
    if key in _cache:
        return _cache[key]
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise ProfileError(f"invalid sensor profile name {name!r}")
    path = directory / f"{name}.json"
    if not path.is_file():
        known = ", ".join(profile_names(directory)) or "none"
        raise ProfileError(f"no sensor profile {name!r} (known: {known})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON: {exc}") from exc
    profile = profile_from_dict(data, source=str(path))
    if profile.name != name:
        raise ProfileError(f"{path}: name {profile.name!r} does not match the file name")
    _cache[key] = profile
    return profile
