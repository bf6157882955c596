# SPDX-License-Identifier: MIT
"""config.json on flash: whitelisted keys, validated, with defaults; secrets never shown.

    cfg = Config(fs)                   # loads config.json (or the last good config.json.bak,
    cfg.problems                       # or the defaults) and says what was wrong; never raises
    cfg = Config(fs, data=running)     # wraps a config validated before (no flash read)
    cfg.data["interval_s"]             # the validated config, every key present
    cfg.get("http.path")               # value by key path; secrets come back as "***"
    cfg.secret("http.token")           # the real secret, for the code that needs it
    cfg.set("interval_s", 30)          # validate, then write (temp + rename); ConfigError
    cfg.set_text("mqtt.enabled", "true")   # console form: text parsed for the key's type
    cfg.redacted()                     # a copy safe to print

A refused value raises ConfigError naming the key and the rule; the previous config stays in
memory and on flash. A write goes to config.json.bak, then to config.json, each as temp file +
rename: a power cut leaves config.json valid, and a config.json broken later (by hand)
falls back to the .bak, the last config this module wrote. Error messages never
contain secret values or URLs (which could carry credentials).

The rules (meter.config_check) are loaded for each load or change and dropped after it on
the device; only the validated data stays in the heap.
"""

import json

from meter import modules
from meter.errors import ConfigError

try:
    from micropython import const
except ImportError:  # CPython
    from meter.cpython_shims import const

CONFIG = const("config.json")
BACKUP = const("config.json.bak")
SECRETS = ("wifi.password", "http.token", "mqtt.password")
_MAX_FILE = const(8192)
_RULES = const("meter.config_check")


def _rules():
    return modules.use(_RULES)


# Reading needs no rules (meter.config_check is ~12 KB of code): `config get` only loads this.
def redacted(data):
    """A copy of config data with every secret replaced by "***" (or "" when unset)."""
    out = json.loads(json.dumps(data))
    for key_path in SECRETS:
        section, key = key_path.split(".")
        if out[section][key]:
            out[section][key] = "***"
    return out


def get(data, key_path):
    """The value at a dotted key path in data ("channels.0.pin"); ConfigError if none."""
    if not isinstance(key_path, str) or not key_path:
        raise ConfigError("config: empty key")
    parts = key_path.split(".")
    node = data
    for i, p in enumerate(parts):
        if isinstance(node, list) and p.isdigit():
            if int(p) < len(node):
                node = node[int(p)]
                continue
            if i < len(parts) - 1:
                raise ConfigError("config: %s does not exist" % ".".join(parts[:i + 1]))
        elif isinstance(node, dict) and p in node:
            node = node[p]
            continue
        raise ConfigError("config: %s is not a known key" % (
            key_path if i == len(parts) - 1 else ".".join(parts[:i + 1])))
    return node


def validate(data):
    """A complete, validated copy of `data` (missing keys take defaults); ConfigError if not."""
    try:
        return _rules().validate(data)
    finally:
        modules.drop(_RULES)


class Config:
    def __init__(self, fs, load=True, data=None):
        self.fs = fs
        self.data = data  # given: a config validated before (the running meter's)
        self.source = None  # which file the config came from (None: defaults)
        self.problems = []
        if data is not None:
            return
        if load:
            self.load()
        else:
            self.data = validate({})

    def load(self):
        """Load config.json, else the last good config.json.bak, else the defaults."""
        self.problems = []
        rules = _rules()
        try:
            for name in (CONFIG, BACKUP):
                try:
                    raw = self.fs.read(name)
                except OSError:
                    if name == CONFIG and self.fs.exists(BACKUP):
                        self.problems.append("%s: missing" % CONFIG)
                    continue
                try:
                    if len(raw) > _MAX_FILE:
                        raise ConfigError("config: file larger than %d bytes" % _MAX_FILE)
                    try:
                        obj = json.loads(raw.decode())
                    except (ValueError, UnicodeError):
                        raise ConfigError("config: not valid JSON") from None
                    del raw
                    self.data = rules.validate(obj)
                    self.source = name
                    if name == BACKUP:
                        self.problems.append("using the last good config from %s" % BACKUP)
                    return True
                except ConfigError as e:
                    self.problems.append("%s: %s" % (name, e.args[0]))
            self.data = rules.defaults()
            self.source = None
            if self.problems:
                self.problems.append("using the default config")
            return False
        finally:
            modules.drop(_RULES)

    def get(self, key_path):
        """Value at a dotted key path ("http.url", "channels.0.pin"); secrets as "***"."""
        return get(self.redacted(), key_path)

    def secret(self, key_path):
        """The real value of a secret key, for the code that must use it (never print it)."""
        if key_path not in SECRETS:
            raise ConfigError("config: %s is not a secret key" % key_path)
        section, key = key_path.split(".")
        return self.data[section][key]

    def set(self, key_path, value):
        """Validate the whole config with key_path = value, then write it. ConfigError (and
        nothing changed, in memory or on flash) if a rule is broken or the write fails."""
        try:
            return self._set(_rules(), key_path, value, False)
        finally:
            modules.drop(_RULES)

    def set_text(self, key_path, text):
        """`config set KEY VALUE` from the console: parse VALUE for KEY's type, then set()."""
        try:
            return self._set(_rules(), key_path, text, True)
        finally:
            modules.drop(_RULES)

    def _set(self, rules, key_path, value, text):
        # one load of the rules per change: a module dropped and loaded again within one
        # call could still be referenced from this frame and need the heap twice
        if text:
            try:
                value = rules.parse_text(key_path, value)
            except ConfigError:
                rules.known(self.data, key_path)  # an unknown key is the error to report
                raise
        new = rules.changed(self.data, key_path, value)
        self._write(new)
        self.data = new
        return get(redacted(new), key_path)

    def replace(self, data):
        """Validate and write a whole new config (e.g. pushed by the host)."""
        new = validate(data)
        self._write(new)
        self.data = new

    def _write(self, new):
        text = json.dumps(new).encode()
        try:
            self.fs.replace(BACKUP, text)
            self.fs.replace(CONFIG, text)
        except OSError as e:
            raise ConfigError("config: could not write %s (%s); nothing changed"
                              % (CONFIG, e)) from None
        self.source = CONFIG

    def redacted(self):
        """A copy of the config with every secret replaced by "***" (or "" when unset)."""
        return redacted(self.data)

    def __repr__(self):
        return "Config(%s)" % json.dumps(self.redacted())
