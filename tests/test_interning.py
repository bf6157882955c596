# SPDX-License-Identifier: MIT
"""Text the meter reads must not grow MicroPython's table of interned names.

On MicroPython, indexing or iterating a str interns each character it yields as a name
(a qstr), and interned names are never freed: a parser that walks typed text character by
character would add every new character anyone types (any Unicode code point) to the
table for good, and the table grows by doubling (one ~7 KB block on the 64-bit unix port
past 620 names; ctmeter.minify keeps the firmware under that). So everything that walks
console lines, config values, URLs and tokens does so over bytes. This runs each of those
walkers on the unix port with characters nothing has interned yet, and counts the names
before and after (micropython.qstr_info).
"""

import re

import pytest

SCRIPT = r"""
import micropython
from meter import config, console_cmds, console_out, ha_discovery, http_post, jsontext, url

def walk(t):
    calls = (
        lambda: jsontext.loads('{"k%s": "x%s\\u0041", "n": [1, 2.5e3, true]}' % (t, t)),
        lambda: jsontext.loads('{"k": %s}' % t),
        lambda: jsontext.loads('["%s", 01]' % t),
        lambda: console_out.is_secret_key("pass%s_word.%s" % (t, t)),
        lambda: console_out._printable("x%s\x01" % t),
        lambda: console_out._printable("x%s" % t),
        lambda: console_cmds.parse_int("1%s" % t),
        lambda: console_cmds.parse_int("-12"),
        lambda: console_cmds.parse_float("1.5e%s" % t),
        lambda: console_cmds.parse_float("+.5"),
        lambda: console_cmds._parse_key("k%s.x" % t),
        lambda: console_cmds._parse_key("%s" % t),
        lambda: url.parse("http://h%s:8%s0/p%s" % (t, t, t)),
        lambda: url.parse("http://h:80/p%s#f" % t),
        lambda: http_post._check_header_value("tok%sen" % t, "Authorization"),
        lambda: ha_discovery.check_id("x%s" % t),
        lambda: config.validate({"device_id": "K%s" % t}),
        lambda: config.validate({"wifi": {"ssid": "s%s" % t, "password": "p%s345678" % t}}),
        lambda: config.validate({"mqtt": {"prefix": "%s/x" % t, "url": "mqtt://h%s/" % t}}),
        lambda: config.validate({"http": {"url": "http://h%s:1/%s" % (t, t)}}),
    )
    for call in calls:
        try:
            call()
        except Exception:
            pass

walk("a")  # the code's own names are interned when it loads; this also warms up
print("BEFORE")
micropython.qstr_info()
for t in ("\u0416", "\u03a9\u03c8", "\u00fc\u00df", "\u2603", "\U0001f600", "Q~^`"):
    walk(t)
print("AFTER")
micropython.qstr_info()
"""


def _count(text):
    return int(re.search(r"n_qstr=(\d+)", text).group(1))


def test_reading_text_interns_no_names(micropython):
    out = micropython.run(SCRIPT, heapsize="256k")
    before, after = out.split("BEFORE", 1)[1].split("AFTER", 1)
    assert _count(after) == _count(before), out


@pytest.mark.parametrize("walk", ["for c in s: pass", "c = s[1]"])
def test_the_port_interns_characters_it_yields(micropython, walk):
    # the premise of this file, shown on the port itself (and that counting works)
    out = micropython.run("import micropython\ns = 'x\u0416\u03a9'\nprint('BEFORE')\n"
                          "micropython.qstr_info()\n" + walk + "\nprint('AFTER')\n"
                          "micropython.qstr_info()\n")
    before, after = out.split("BEFORE", 1)[1].split("AFTER", 1)
    assert _count(after) > _count(before)
