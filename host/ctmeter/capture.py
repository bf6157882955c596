# SPDX-License-Identifier: MIT
"""The raw ADC capture file (`ctmeter capture v1`): written by `ctmeter scope` (and tests),
read by `ctmeter replay` and `ctmeter scope`. One writer, one reader, for both.

    write(path, codes, ["code_i1", "code_v"], {"sample_rate_hz": 4000, "amps_per_count":
          0.0089, "volts_per_count": 0.41, "mains_hz": 50, "device": "m1"})
    raw = read(path)        # raw.keys {name: text}, raw.key_lines, raw.columns, raw.codes

    # ctmeter capture v1
    # sample_rate_hz=4000
    # amps_per_count=0.00894
    # device=meter1
    code_i1,code_v
    2051,2101
    ...

- `# key=value` lines (anywhere, each key once) give the parameters; any other `#` line is
  a comment. What the keys mean is up to the reader (ctmeter.replay documents them).
- The header row names the columns: `code` (one input), `code_v` (the voltage input alone),
  or `code_i1[,code_i2..code_i4][,code_v]`. Then one row per sample instant of integer
  codes 0..4095. Blank lines are ignored. A version other than v1 is refused.
Every problem raises CaptureError (exit code 2) naming the file and line.
"""

import re
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctmeter.errors import CommandError
from ctmeter.transport import EXIT_USAGE

VERSION = 1
MAX_CODE = 4095
MAX_CURRENT_COLUMNS = 4
_KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_MAGIC_RE = re.compile(r"^ctmeter\s+capture\s+v(\d+)\b")


class CaptureError(CommandError):
    def __init__(self, message, hint=""):
        super().__init__(message, hint, EXIT_USAGE)


@dataclass
class RawCapture:
    path: str
    keys: dict  # name -> text, as written
    key_lines: dict  # name -> line number
    columns: list  # header row names
    header_line: int
    codes: np.ndarray  # (n, len(columns)) uint16

    @property
    def ncurrent(self):
        return len(self.columns) - self.has_voltage

    @property
    def has_voltage(self):
        return self.columns[-1] == "code_v"


def check_columns(path, lineno, header):
    """CaptureError unless `header` is a valid header row."""
    if header in (["code"], ["code_v"]):
        return
    cur = header[:-1] if header and header[-1] == "code_v" else header
    if not cur or cur != [f"code_i{i + 1}" for i in range(len(cur))] \
            or len(cur) > MAX_CURRENT_COLUMNS:
        raise CaptureError(
            f"{path}:{lineno}: header must be `code` or `code_i1[,code_i2..code_i4][,code_v]`, "
            f"got {','.join(header)!r}")


def _clean(value) -> str:
    """A header value on one line (a newline could end the header early)."""
    return " ".join(str(value).split())


def write(path, codes, columns, keys) -> Path:
    """Write codes (n, len(columns)) under `# key=value` lines (in the order given)."""
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    check_columns(path, 0, list(columns))
    if codes.shape[1] != len(columns):
        raise ValueError(f"{codes.shape[1]} code columns for {len(columns)} names")
    lines = [f"# ctmeter capture v{VERSION}"]
    lines += [f"# {k}={_clean(v)}" for k, v in keys.items()]
    lines.append(",".join(columns))
    body = "\n".join(",".join(str(int(v)) for v in row) for row in codes)
    path = Path(path)
    try:
        path.write_text("\n".join(lines) + "\n" + body + "\n", encoding="utf-8")
    except OSError as exc:
        raise CaptureError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def read(path) -> RawCapture:
    """Parse a capture file; CaptureError naming the file and line if it is not one."""
    path = str(path)
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    keys, key_lines, flat = {}, {}, array("H")
    header = header_line = None
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                text = line.strip()
                if not text:
                    continue
                if text.startswith("#"):
                    body = text[1:].strip()
                    magic = _MAGIC_RE.match(body)
                    if magic and int(magic.group(1)) != VERSION:
                        raise CaptureError(f"{path}:{lineno}: capture format v{magic.group(1)} "
                                           f"is not supported (this ctmeter reads v{VERSION})")
                    m = _KEY_RE.match(body)
                    if m:
                        key = m.group(1)
                        if key in keys:
                            raise CaptureError(f"{path}:{lineno}: {key} is given twice "
                                               f"(first on line {key_lines[key]})")
                        keys[key], key_lines[key] = m.group(2).strip(), lineno
                    continue
                fields = [f.strip() for f in text.split(",")]
                if header is None:
                    header, header_line = fields, lineno
                    check_columns(path, lineno, header)
                    continue
                if len(fields) != len(header):
                    raise CaptureError(f"{path}:{lineno}: {len(fields)} values, the header "
                                       f"has {len(header)} columns")
                try:
                    row = [int(f) for f in fields]
                except ValueError:
                    raise CaptureError(f"{path}:{lineno}: codes must be integers, got "
                                       f"{text!r}") from None
                for v in row:
                    if not 0 <= v <= MAX_CODE:
                        raise CaptureError(f"{path}:{lineno}: code {v} is outside "
                                           f"0..{MAX_CODE}")
                flat.extend(row)
        except UnicodeDecodeError as exc:
            raise CaptureError(f"{path}: not a text file ({exc.reason})") from None
    if header is None:
        raise CaptureError(f"{path}: no header row (`code` or `code_i1,...`)")
    if not flat:
        raise CaptureError(f"{path}:{header_line}: no codes after the header row")
    codes = np.frombuffer(flat, dtype=np.uint16).reshape(-1, len(header))
    return RawCapture(path, keys, key_lines, header, header_line, codes)
