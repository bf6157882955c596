# SPDX-License-Identifier: MIT
"""meter.jsontext: the console's strict JSON, held to CPython's json (which is strict) and
run on MicroPython (whose json.loads alone takes '{"gain": }' as {})."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meter import jsontext

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4),
    max_leaves=12)


def _depth(v):
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    return 0


def _cpython_takes(text):
    try:
        json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
        return True
    except ValueError:
        return False


@given(json_values, st.sampled_from([None, 1, 2]))
def test_every_json_text_is_taken_as_cpython_reads_it(value, indent):
    text = json.dumps(value, indent=indent, ensure_ascii=indent is None)
    assert jsontext.loads(text) == json.loads(text)


@given(json_values, st.data())
def test_a_mangled_text_is_refused_exactly_when_cpython_refuses_it(value, data):
    text = json.dumps(value)
    if _depth(value) > 8:
        return
    i = data.draw(st.integers(0, len(text)))
    how = data.draw(st.sampled_from(["drop", "insert", "dup"]))
    if how == "drop" and i < len(text):
        mangled = text[:i] + text[i + 1:]
    elif how == "dup" and i < len(text):
        mangled = text[:i] + text[i] + text[i:]
    else:
        mangled = text[:i] + data.draw(st.sampled_from(list(',:{}[]"0 1.e-\\x'))) + text[i:]
    try:
        jsontext.check(mangled)
        ours = True
    except ValueError:
        ours = False
    assert ours == _cpython_takes(mangled), mangled


@pytest.mark.parametrize("text", ['{"gain": }', '{"gain"}', '{"a": 1,}', '[1 2]', '[1,,2]',
                                  "01", "-01", "1.", "00.5", '"a\\x"', '"\\u12"', '"\t"',
                                  "", " ", "NaN", "Infinity", '{"a":1}x', "[" * 10 + "]" * 10])
def test_refused(text):
    with pytest.raises(ValueError):
        jsontext.loads(text)


@pytest.mark.micropython
def test_on_micropython_the_lenient_texts_are_refused(micropython):
    out = micropython.run(
        "import json\n"
        "from meter import jsontext\n"
        "for t in ('{\"gain\": }', '{\"gain\"}', '[1 2]', '[1,,2]', '01', '{\"a\": 1,}',\n"
        "          '\"a\\\\x\"', '1.'):\n"
        "    lenient = json.loads(t)\n"
        "    try:\n"
        "        jsontext.loads(t)\n"
        "        print('TAKEN', t)\n"
        "    except ValueError as e:\n"
        "        print('refused', repr(lenient), e)\n"
        "print(jsontext.loads("
        "'{\"gain\": 1.02, \"points\": [[0.5, 1e-3]], \"s\": \"\\\\u00e9\"}'))\n")
    lines = out.splitlines()
    assert not any(line.startswith("TAKEN") for line in lines), out
    assert lines[0].startswith("refused {}") and lines[1].startswith("refused {}")
    assert len(lines) == 9
    assert "'gain': 1.02" in lines[-1] and "'s': '\\xe9'" in lines[-1]
