# SPDX-License-Identifier: MIT
"""`ctmeter console`: the running meter's console, one command or an interactive session.

    ctmeter console --port /dev/ttyUSB0 status            # pretty JSON of the answer
    ctmeter console --port /dev/ttyUSB0 --json read       # the meter's JSON line as sent
    ctmeter console --port /dev/ttyUSB0                   # interactive: history, Ctrl-D quits
    printf 'status\\nadc\\n' | ctmeter console --port P   # commands from a pipe

Talks through ctmeter.meterlink (JSON mode while connected, the old mode back after).
Secrets stay masked as the meter sends them; lines that set a secret are kept out of the
history file ($CTMETER_CACHE or ~/.cache/ctmeter/console_history, mode 0600).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys

from ctmeter.errors import CommandError
from ctmeter.meterlink import MeterError, MeterLink, command_name
from ctmeter.transport import EXIT_CODES_HELP, EXIT_DEVICE, EXIT_USAGE

HISTORY_FILE = "console_history"
HISTORY_LENGTH = 1000
LOCAL_HELP = ("local: exit | quit | Ctrl-D leave;  mode [json|human] shows or sets the mode "
              "the meter is left in;  reboot waits for the boot line")
# words that mark a config key as secret; such `config set` lines never reach the history
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "psk", "key", "auth", "credential")
_SECRET_NAMES = ("password", "passwd", "token", "secret", "credential")  # and typos of them


def register(subparsers):
    p = subparsers.add_parser(
        "console", help="the running meter's console: one command, or interactive",
        description="Send console commands to a running meter over its serial port and show "
                    "the answers as pretty JSON. With a command: run it and exit (non-zero "
                    "with the meter's error if it refuses). Without: an interactive session "
                    "with history (exit, quit or Ctrl-D leave), or commands read from a pipe.",
        epilog="Arguments that start with '-' go after '--': ctmeter console --port P -- "
               "cal point 0 -1.  " + EXIT_CODES_HELP)
    p.add_argument("--port", required=True,
                   help="serial port of the meter: /dev/ttyUSB0, a pty, socket://host:port")
    p.add_argument("--json", action="store_true",
                   help="print the meter's JSON answer line exactly as received")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for each answer (default 30; cal and scope take "
                        "several)")
    p.add_argument("command", nargs="*", help="a console command, e.g. status, "
                                              "config get wifi.ssid, cal zero 0")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------- formatting


def pretty(obj, indent: int = 0, width: int = 100) -> str:
    """JSON for people: sorted keys, nested objects indented, short values on one line,
    long lists of numbers wrapped."""
    flat = json.dumps(obj, sort_keys=True, ensure_ascii=False)
    if len(flat) + indent <= width or not isinstance(obj, (dict, list)) or not obj:
        return flat
    pad = " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: "
                 f"{pretty(obj[k], indent + 2, width).lstrip()}" for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if all(not isinstance(x, (dict, list)) for x in obj):
        lines, cur = [], ""
        for x in obj:
            word = json.dumps(x, ensure_ascii=False)
            if cur and len(pad) + len(cur) + len(word) + 2 > width:
                lines.append(pad + cur + ",")
                cur = ""
            cur = f"{cur}, {word}" if cur else word
        lines.append(pad + cur)
        return "[\n" + "\n".join(lines) + "\n" + " " * indent + "]"
    return "[\n" + ",\n".join(pad + pretty(x, indent + 2, width) for x in obj) + "\n" + \
        " " * indent + "]"


def show(answer: dict, raw_line: str, as_json: bool, out=None) -> None:
    out = out or sys.stdout
    if as_json:
        print(raw_line or json.dumps(answer), file=out)
    elif not answer.get("ok"):
        print(f"error: {answer.get('error', 'failed')}", file=out)
    else:
        body = {k: v for k, v in answer.items() if k not in ("ok", "cmd")}
        print(pretty(body) if body else "ok", file=out)


def sets_secret(line: str) -> bool:
    """True for a line that may carry a secret, kept out of the history: one that names a
    secret-looking key (`config set wifi.password ...`, `config set wifi {"password": ...}`),
    also when the key or the command is mistyped (`config set wifi.pasword ...`,
    `confg set http.token ...`): the meter refuses those, but the value typed is still the
    secret. `config get` lines type no value (the meter masks its answer)."""
    words = line.split()
    if words[:2] == ["config", "get"]:
        return False
    for word in words:
        for part in re.split(r"[^a-z]+", word.lower()):
            if any(w in part for w in _SECRET_WORDS) or \
                    difflib.get_close_matches(part, _SECRET_NAMES, n=1, cutoff=0.75):
                return True
    return False


# ------------------------------------------------------------------------- one line


def do_line(link: MeterLink, line: str, as_json: bool, out=None) -> dict:
    """Run one console line (meter command or local one) and print its answer; the answer."""
    out = out or sys.stdout
    words = line.split()
    if not words:
        raise CommandError("empty command", "try `help`", EXIT_USAGE)
    name = command_name(line)
    if name == "reboot" and len(words) == 1:
        boot = link.reboot()
        answer = {"ok": True, "cmd": "reboot", "boot": boot}
        show(answer, "", as_json, out)
        return answer
    if words[0] == "mode":
        # The link keeps JSON mode while connected; `mode` chooses what the meter keeps.
        if len(words) > 2 or (len(words) == 2 and words[1] not in ("json", "human")):
            answer = {"ok": False, "cmd": "mode", "error": "mode: must be one of json|human"}
        else:
            if len(words) == 2:
                link.restore_mode = words[1]
            answer = {"ok": True, "cmd": "mode",
                      "mode": link.restore_mode or link.previous_mode}
        show(answer, "", as_json, out)
        return answer
    answer = link.cmd_raw(line)
    show(answer, link.last_line, as_json, out)
    error = str(answer.get("error", ""))
    if not as_json and re.fullmatch(r"unknown (\S+ sub)?command \(try help\)", error):
        guess = closest_command(words, _command_words(link))
        if guess:
            print(f"did you mean `{guess}`?", file=out)
    unknown_key = re.fullmatch(r"config: (\S+) is not a known key", error)
    if not as_json and unknown_key:
        guess = closest_key(unknown_key.group(1), _config_keys(link))
        if guess:
            print(f"did you mean `{guess}`?", file=out)
    return answer


def closest_key(typed: str, keys: list):
    """The config key (dotted path) that `typed` most likely meant, or None."""
    hits = difflib.get_close_matches(typed, keys, n=1, cutoff=0.75)
    return hits[0] if hits else None


def config_keys(config, prefix="") -> list:
    """Every dotted key path of a config as `config get` shows it (channels.0.sensor, ...)."""
    items = (config.items() if isinstance(config, dict)
             else enumerate(config) if isinstance(config, list) else ())
    keys = []
    for k, v in items:
        path = f"{prefix}{k}"
        keys.append(path)
        keys.extend(config_keys(v, path + "."))
    return keys


def _config_keys(link) -> list:
    try:
        answer = link.cmd_raw("config get")
    except CommandError:
        return []
    return config_keys({k: v for k, v in answer.items() if k not in ("ok", "cmd")})


def closest_command(words: list, names: list):
    """The meter's command (from `help`) that the mistyped `words` most likely meant, or
    None. Only the command's own name is ever shown, never what was typed (it may hold a
    password)."""
    best, score = None, 0.0
    for name in names:
        typed = " ".join(words[:len(name.split())])
        ratio = difflib.SequenceMatcher(None, typed, name).ratio()
        if ratio > score:
            best, score = name, ratio
    return best if score >= 0.75 else None


def one_shot(args) -> int:
    line = " ".join(args.command)
    with MeterLink.open(args.port, timeout=args.timeout) as link:
        answer = do_line(link, line, args.json)
    if not answer.get("ok"):
        raise MeterError(command_name(line), str(answer.get("error") or "failed"), answer)
    return 0


# ------------------------------------------------------------------------- sessions


def history_path():
    from ctmeter.flash import cache_dir

    return cache_dir() / HISTORY_FILE


class _History:
    """readline with a history file; none if readline is missing (Windows without it)."""

    def __init__(self, words):
        try:
            import readline
        except ImportError:
            readline = None
        self.rl = readline
        self.path = history_path()
        if readline is None:
            return
        readline.set_auto_history(False)
        readline.set_history_length(HISTORY_LENGTH)
        try:
            readline.read_history_file(self.path)
        except OSError:
            pass  # none yet
        completions = sorted(set(words) | {"exit", "quit"})

        def complete(text, state):
            typed = readline.get_line_buffer().lstrip()
            hits = [w for w in completions if w.startswith(typed)]
            cut = len(typed) - len(text)  # complete the word under the cursor only
            hits = [w[cut:] for w in hits]
            return hits[state] if state < len(hits) else None

        readline.set_completer_delims(" ")
        readline.set_completer(complete)
        readline.parse_and_bind("tab: complete")

    def add(self, line):
        if self.rl is not None and not sets_secret(line):
            self.rl.add_history(line)

    def save(self):
        if self.rl is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.rl.write_history_file(self.path)
            os.chmod(self.path, 0o600)
        except OSError as exc:
            print(f"ctmeter: history not saved ({exc})", file=sys.stderr)


def _command_words(link) -> list:
    """Command names for tab completion, from the meter's own `help`."""
    try:
        answer = link.cmd_raw("help")
    except CommandError:
        return []
    names = []
    for usage in answer.get("commands", []):
        words = [w for w in str(usage).split() if not w.startswith(("<", "["))]
        if words:
            names.append(" ".join(words))
    return names


def interactive(args) -> int:
    tty = sys.stdin.isatty()
    failed = False
    with MeterLink.open(args.port, timeout=args.timeout) as link:
        history = None
        prompt = ""
        if tty:
            status = link.cmd("status")
            device = status.get("device", "meter")
            print(f"ctmeter console: {device} on {args.port}, firmware "
                  f"{status.get('version', '?')}; `help` lists the commands, Ctrl-D leaves")
            history = _History(_command_words(link))
            prompt = f"{device}> "
        try:
            while True:
                try:
                    line = input(prompt) if tty else sys.stdin.readline()
                except EOFError:
                    break
                except KeyboardInterrupt:
                    print("^C")
                    continue
                if not tty and not line:
                    break
                line = line.strip()
                if not line:
                    continue
                if line in ("exit", "quit"):
                    break
                if history is not None:
                    history.add(line)
                try:
                    answer = do_line(link, line, args.json)
                    if line == "help" and not args.json:
                        print(LOCAL_HELP)
                    failed |= not answer.get("ok")
                except MeterError as exc:
                    print(f"error: {exc}")
                    failed = True
                except CommandError as exc:
                    if exc.exit_code != EXIT_USAGE and not _answering(link):
                        raise  # the link is gone
                    print(f"error: {exc}")
                    failed = True
                except KeyboardInterrupt:
                    print("^C (the meter may still answer; that answer is skipped)")
        finally:
            if history is not None:
                history.save()
            if tty:
                print()
    # a piped session reports whether every command succeeded
    return EXIT_DEVICE if failed and not tty else 0


def _answering(link) -> bool:
    try:
        link.cmd_raw("help", timeout=min(5.0, link.timeout))
    except CommandError:
        return False
    return True


def run(args) -> int:
    if args.timeout <= 0:
        raise CommandError("--timeout must be positive", exit_code=EXIT_USAGE)
    if args.command:
        return one_shot(args)
    return interactive(args)
