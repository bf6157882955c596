# SPDX-License-Identifier: MIT
"""The sensor model: ground truth for all accuracy work (CPython + numpy).

Physical chain, each part a module:
    mains.Mains        50/60 Hz with slow drift (<= +-0.5 Hz), rms wander, harmonics
    loads.*            Resistive, Inductive(pf), SMPS(crest_factor), Standby, Dimmer(angle),
                       Motor(inrush); Profile = schedule of overlapping load segments
    profiles           calibration/profiles/<sensor>.json -> SensorProfile (load_profile)
    frontend.Frontend  sensor unit (ratio error, phase lead, saturation) + bias divider + ADC
    adc.Esp32Adc       ESP32 ADC1: attenuation ranges, Vref gain error, 11 dB top-end curve,
                       INL bow, DNL, noise, 12-bit quantization, clipping
    stream.Stream      chunked code stream with exact truth (Irms, P, S, energy)
    waveform           recorded CSV waveforms -> codes through the same front end

Public API (all deterministic from their `seed` arguments):

    Frontend(sensor="sct013-030", burden_ohm=None, board_atten_db=11, vref_mv=1100,
             bias_tolerance=0.01, ideal=False, seed=0, noise_lsb=2.0, inl_lsb=2.5,
             dnl_lsb=0.25, burden_tolerance=0.01, supply_v=3.3, volts_per_unit=None)
        .amps_per_count  (current sensors)  .volts_per_count (voltage sensor, mains V)
        .adc_volts_per_count  .bias_code (true)  .nominal_bias_code  .codes(primary, noise)
        vref_mv=None draws the chip's Vref from 1000..1200 mV. Nominal conversions are what
        firmware computes from profile + board data (Vref 1100, straight line, no unit errors).

    Stream(channels=[Channel(frontend, profile_or_load), ...1-4], mains=Mains(),
           voltage=None | "zmpt101b" | Frontend("zmpt101b"), sample_rate=4000.0, seed=0,
           channel_skew_s=0.0)
        .read(k0, n, sample_rate=None, truth=True) -> Frames(codes (n, ncols) uint16,
              truth=Truth(irms[], p[], s[], pf[], vrms, freq, energy_wh[]))
              columns: current channels in order, then the voltage channel if configured
        .truth(t1, t2) -> Truth;  .energy_wh(ch, t1, t2) -> float;  .energy_mwh(ch, t1, t2)
              -> int (floor of the running total, additive over consecutive ranges)
        .set_load(ch, load_or_None, at_time);  .add_load(ch, load, at_time, until=inf)
        .current(ch, t) / .mains_voltage(t) -> physical signals at arbitrary times
        .describe() -> dict for diagnostics;  Frames.times -> sample instants (s)
        channel_skew_s: column j is sampled j * skew later (sequential ADC reads)

    Profile().add(load, start, stop=inf) / .switch(load, at);  Profile.constant(load)
    varying_profile(days, seed, scale=1.0) -> Profile (household mix for soak tests)
    irms_for_percent(sensor, percent) -> A (or V);  load_for_percent(sensor, percent, pf=1)
    Mains(nominal_v=230, freq_hz=50, vrms=None, freq_offset_hz=0, freq_drift_hz=0.1,
          voltage_wander=0.01, harmonics=DEFAULT_HARMONICS, seed=0); Mains.clean(); Mains.region()

    load_waveform(path) -> Waveform(time_s, current_a, voltage_v)
    codes_from_waveform(time_s, current_a, voltage_v=None, sensor="sct013-000",
                        sample_rate=4000.0, burden_ohm=None, frontend=None,
                        voltage_sensor="zmpt101b", voltage_frontend=None, method="linear",
                        freq_hz=50.0, seed=0, ideal=False, **frontend_kw) -> WaveformCodes
        .codes, .t, .frontends, .truth(t1, t2) -> dict(irms, vrms, p, s, pf)

    load_profile(name) -> SensorProfile; profile_names()

ESP32 11 dB top end: Espressif's esp_adc_cal curves (above raw 2880) are used as the chip's
true transfer, so codes leave the straight line there and reach 4095 near 3.06-3.21 V
(Vref 1000-1200) instead of ~3.44 V; nominal conversions stay on the straight line, as
firmware that does not linearise would.

Loads are sized (irms= or watts=) at the grid's nominal voltage. Truth is exact for the model:
every current is envelope(t) x one-cycle table(mains phase), and the integrals over any range
use the tables' exact cycle means plus a boundary term (periodic.py), so energy over days costs
milliseconds and equals the fine-grained integral of v(t) i(t).
"""

from ctmeter.model.adc import ATTENUATIONS, AdcError, Esp32Adc
from ctmeter.model.frontend import Frontend, FrontendError, noise_blocks
from ctmeter.model.loads import (
    SMPS,
    Dimmer,
    Inductive,
    Load,
    LoadError,
    Motor,
    Profile,
    Resistive,
    Segment,
    Standby,
    irms_for_percent,
    load_for_percent,
    varying_profile,
)
from ctmeter.model.mains import Mains, MainsError
from ctmeter.model.profiles import ProfileError, SensorProfile, load_profile, profile_names
from ctmeter.model.stream import Channel, Frames, Stream, StreamError, Truth
from ctmeter.model.waveform import (
    Waveform,
    WaveformCodes,
    WaveformError,
    codes_from_waveform,
    load_waveform,
    resample,
)

__all__ = [
    "ATTENUATIONS", "AdcError", "Channel", "Dimmer", "Esp32Adc", "Frames", "Frontend",
    "FrontendError", "Inductive", "Load", "LoadError", "Mains", "MainsError", "Motor",
    "Profile", "ProfileError", "Resistive", "SMPS", "Segment", "SensorProfile", "Standby",
    "Stream", "StreamError", "Truth", "Waveform", "WaveformCodes", "WaveformError",
    "codes_from_waveform", "irms_for_percent", "load_for_percent", "load_profile",
    "load_waveform", "noise_blocks", "profile_names", "resample", "varying_profile",
]
