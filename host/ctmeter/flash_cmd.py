# SPDX-License-Identifier: MIT
"""`ctmeter flash`: MicroPython onto the board with esptool, then `ctmeter deploy`."""

import sys

from ctmeter import flash as api
from ctmeter.boards import load_board
from ctmeter.deploy_cmd import (
    add_board_args,
    add_deploy_args,
    config_from_args,
    progress_bars,
    report,
)
from ctmeter.transport import EXIT_CODES_HELP


def register(subparsers):
    p = subparsers.add_parser(
        "flash", help="write MicroPython to a board (esptool), then deploy the meter",
        description="Check the MicroPython image (sha256 pinned in boards/, or recorded at its "
                    "first download: trust on first use), detect the chip with esptool and "
                    "refuse one that is not the board's, erase, write the image at the board's "
                    "offset, reset, then deploy the firmware. Nothing is written to the board "
                    "before the image and the chip are checked.",
        epilog=EXIT_CODES_HELP + ". Cache: $CTMETER_CACHE or ~/.cache/ctmeter; "
               "$CTMETER_FIRMWARE_MIRROR replaces the micropython.org download base.")
    add_board_args(p)
    p.add_argument("--image", metavar="FILE",
                   help="flash this MicroPython .bin instead of the board's download (offline)")
    p.add_argument("--sha256", help="expected sha256 of --image")
    p.add_argument("--baud", type=int, default=api.DEFAULT_BAUD,
                   help=f"baud rate for writing (default {api.DEFAULT_BAUD})")
    p.add_argument("--no-erase", action="store_true", help="write without erasing first")
    p.add_argument("--no-deploy", action="store_true",
                   help="only flash MicroPython; do not deploy the meter")
    add_deploy_args(p)
    p.set_defaults(func=run)


def run(args):
    config = config_from_args(args)  # a bad config is refused before the board is touched
    board = load_board(args.board)

    def notify(text):
        print(f"flash: {text}", file=sys.stderr)

    with progress_bars() as progress:
        result = api.flash(board, args.port, image=args.image, sha256=args.sha256,
                           baud=args.baud, erase=not args.no_erase,
                           deploy_after=not args.no_deploy, progress=progress, notify=notify,
                           deploy_kwargs={"config": config, "wait": not args.no_wait,
                                          "timeout": args.timeout,
                                          "romfs": not args.no_romfs})
    print(f"flashed {result.image.path.name} (sha256 {result.image.sha256}) to the "
          f"{result.chip} at {board.flash_offset_hex}")
    if result.deploy is not None:
        report(result.deploy)
    return 0
