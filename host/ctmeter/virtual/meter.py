# SPDX-License-Identifier: MIT
"""A virtual meter: the sensor model's stream behind a virtual board, with a matching config.

    stream = Stream([Channel(Frontend("sct013-030", ideal=True), Resistive(watts=2000))])
    vb = start_virtual_meter(flash_dir, stream, {"device_id": "sim1", "interval_s": 10})
    ... vb.port ...
    vb.stop()

The config.json written to the flash gives each channel the scale (amps per code) that a
correctly set up meter would use for that sensor and board: the frontend's nominal
conversion, not its individual (unknown) errors. Calibration removes those.
"""

import json
from pathlib import Path

from ctmeter.virtual.supervisor import VirtualBoard

# Default ADC1 pins of an ESP32 (boards/esp32.json); on the virtual board they only label inputs.
CURRENT_PINS = (34, 35, 32, 33)
VOLTAGE_PIN = 36

# The firmware does not fit -X heapsize=64k on the 64-bit unix port yet: deployed as
# bytecode it needs 108-112 KB there with one channel and HTTP (make bench, bench/heap_floor.py)
# and 128 KB for every console command with two channels (README, known gaps). Started from
# the checkout, the virtual board also compiles the sources on the device: a larger heap.
SIM_HEAP = "256k"


class StreamSource:
    """The feed's source interface over a model Stream."""

    def __init__(self, stream):
        self.stream = stream
        self.nch = stream.ncols
        self.sample_rate_hz = int(stream.sample_rate)

    def frames(self, k0, n):
        return self.stream.read(k0, n, truth=False).codes


def meter_config(stream, overrides=None):
    """config.json content for a meter measuring `stream`."""
    channels = []
    for i, ch in enumerate(stream.channels):
        channels.append({"pin": CURRENT_PINS[i], "name": f"ch{i + 1}",
                         "sensor": ch.frontend.sensor,
                         "amps_per_count": float(ch.frontend.amps_per_count)})
    cfg = {"device_id": "sim", "sample_rate_hz": int(stream.sample_rate),
           "channels": channels, "mains_hz": "auto",
           "nominal_voltage": float(stream.mains.nominal_v)}
    if stream.voltage is not None:
        cfg["voltage"] = {"pin": VOLTAGE_PIN, "sensor": stream.voltage.sensor,
                          "volts_per_count": float(stream.voltage.volts_per_count)}
    for key, value in (overrides or {}).items():
        cfg[key] = value
    return cfg


def deploy_to_flash(flash_dir, config=None, build_dir=None, romfs=False):
    """Write into flash_dir what `ctmeter deploy` puts on the virtual board (mpy-cross
    bytecode under lib/, boot.py, main.py), and config.json when `config` is given. With
    romfs=True lib/ goes as a ROMFS image into the board's ROM partition instead (as deploy
    does for a board that has one: start the VirtualBoard with romfs=True)."""
    from ctmeter import romfs as rom_image
    from ctmeter.boards import load_board
    from ctmeter.deploy import build
    from ctmeter.virtual import rom_partition

    flash = Path(flash_dir)
    flash.mkdir(parents=True, exist_ok=True)
    files = build(load_board("virtual"), out_dir=build_dir)
    if romfs:
        rom_partition.write_image(rom_partition.path_for(flash), rom_image.image(files))
        files = {d: f for d, f in files.items() if not d.startswith(rom_image.ROM_DIR)}
    for dest, f in files.items():
        path = flash / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.data)
    if config is not None:
        (flash / "config.json").write_text(json.dumps(config))


def household_stream(days, seed=5, sample_rate=4000):
    """The soak's meter input: one SCT-013-030 on a household load profile covering `days`
    (and half a day more), ZMPT101B voltage, mains that wander as on a real grid."""
    from ctmeter.model import Channel, Frontend, Mains, Stream, varying_profile

    return Stream([Channel(Frontend("sct013-030", ideal=True),
                           varying_profile(days + 0.5, seed=seed))],
                  mains=Mains(seed=seed), voltage=Frontend("zmpt101b", ideal=True),
                  sample_rate=sample_rate, seed=seed)


def start_virtual_meter(flash_dir, stream, overrides=None, clock="fast", timelapse_s=0.0,
                        heapsize=SIM_HEAP, epoch=None, write_config=True, extra_env=None,
                        romfs=False):
    flash = Path(flash_dir)
    flash.mkdir(parents=True, exist_ok=True)
    if write_config:
        (flash / "config.json").write_text(json.dumps(meter_config(stream, overrides), indent=1))
    if romfs:  # this checkout's modules, compiled, in the board's ROMFS partition
        from ctmeter import romfs as rom_image
        from ctmeter.boards import load_board
        from ctmeter.deploy import build
        from ctmeter.virtual import rom_partition

        rom_partition.write_image(rom_partition.path_for(flash),
                                  rom_image.image(build(load_board("virtual"))))
    return VirtualBoard(flash, StreamSource(stream), clock=clock, timelapse_s=timelapse_s,
                        heapsize=heapsize, epoch=epoch, extra_env=extra_env,
                        romfs=romfs).start()
