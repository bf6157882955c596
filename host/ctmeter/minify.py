# SPDX-License-Identifier: MIT
"""Fewer interned names for the compiled firmware: the build renames what only one module
sees before mpy-cross compiles it.

    new_sources, names = minify({"meter.app": text, "meter.boot": text, ...})

Why: MicroPython interns every name a module uses (functions, attributes, parameters, short
strings) in a table that is never freed and grows by doubling. On the 64-bit unix port the
running meter had ~830 names: one more than 620 and the table holds a 640-entry block
(~7 KB) that stays for good, which is the difference between heap sizes the meter runs in
(docs/BENCHMARKS.md, heap). Every port keeps a fixed list of names in ROM (the .mpy
format's static names, py/makeqstrdata.py), and names in ROM cost no table entry: so a
name that only one module uses can become one of those at no cost. mpy-cross has no option
for this and the Python minifiers rewrite the layout (and with it every line number in a
traceback) and do not know MicroPython's tables, so the rename is done here, by token, on
the source: each line stays where it was.

What is renamed, in each module on its own (one name, one stand-in, everywhere in the
module; stand-ins are ROM names no module uses):
- private names (`_x`) that appear in this module only: module-level functions, classes,
  constants, and attributes and methods used only as `self._x` by the classes of this
  module (whose class hierarchy has no other module's renamed attributes);
- parameter names that are never a keyword argument, an attribute, a module-level name or
  a string anywhere in the firmware (they are locals; MicroPython keeps parameter names
  for keyword matching only);
- public `NAME = const(...)` values: where another module reads one as `alias.NAME`,
  the value is written in instead, and the name becomes `_NAME`, which MicroPython's
  compiler folds away (a module with a NAME of its own keeps reading its own).
Never renamed: a name that appears in a string (getattr, __slots__, JSON keys), inside an
f-string, as a keyword argument, in an import, or as an attribute of anything but `self`.
What the build cannot see: a name made at run time (`getattr(obj, "_" + part)`). The
firmware's only computed lookups are of public names (the console's command handlers,
meter.deliver's entry points), which are never renamed; keep it that way.

The result is checked: the new source must parse to the original syntax tree with exactly
these renames and substitutions, or the build stops. Tracebacks from a renamed module name
a renamed function by its stand-in (the line number is exact); the build writes
`names.json` beside the compiled files ({module: {stand-in: name}}) to read them back.
"""

import ast
import builtins
import io
import keyword
import tokenize
from collections import defaultdict

# The names every MicroPython port has in ROM, in the .mpy format's fixed order
# (py/makeqstrdata.py, static_qstr_list); only identifiers are of use here.
STATIC_NAMES = (
    "ArithmeticError AssertionError AttributeError BaseException EOFError Ellipsis Exception "
    "GeneratorExit ImportError IndentationError IndexError KeyError KeyboardInterrupt "
    "LookupError MemoryError NameError NoneType NotImplementedError OSError OverflowError "
    "RuntimeError StopIteration SyntaxError SystemExit TypeError ValueError ZeroDivisionError "
    "abs all any append args bool builtins bytearray bytecode bytes callable chr classmethod "
    "clear close const copy count dict dir divmod end endswith eval exec extend find format "
    "from_bytes get getattr globals hasattr hash id index insert int isalpha isdigit "
    "isinstance islower isspace issubclass isupper items iter join key keys len list little "
    "locals lower lstrip main map micropython next object open ord pop popitem pow print "
    "range read readinto readline remove replace repr reverse rfind rindex round rsplit "
    "rstrip self send sep set setattr setdefault sort sorted split start startswith "
    "staticmethod step stop str strip sum super throw to_bytes tuple type update upper value "
    "values write zip"
).split()


_BUILTIN_ATTRS = frozenset(
    a for t in (object, dict, list, tuple, set, str, bytes, bytearray, memoryview, int, float,
                BaseException, OSError, StopIteration, type((lambda: (yield))()))
    for a in dir(t))


class MinifyError(RuntimeError):
    """The renamed source does not match the original (a bug here): nothing is built."""


def _is_private(name):
    return name.startswith("_") and not name.startswith("__") and len(name) > 1


class _Module:
    """What one module's syntax tree says about its names."""

    def __init__(self, name, text):
        self.name = name
        self.text = text
        self.tree = ast.parse(text)
        self.idents = set()  # every identifier, in any role
        self.strings = set()
        self.in_fstrings = set()
        self.keywords = set()
        self.imported = set()  # names bound or named by an import
        self.module_level = set()  # names bound at module level (or declared global)
        self.params = set()
        self.attrs = defaultdict(list)  # attribute name -> [class of `self` or None]
        self.members = defaultdict(set)  # name defined in a class body -> {class}
        self.classes = {}  # class name -> [base names]
        self.consts = {}  # public NAME = const(...) at module level -> value (or None)
        self.folded = set()  # _NAME = const(...): the compiler folds these, no name left
        self.values = {}  # every const() integer's value, for the expressions of others
        self.aliases = {}  # local name -> module name, for `from pkg import mod [as x]`
        self._walk(self.tree, cls=None, self_cls=None)
        for node in self.tree.body:
            self._module_level(node)

    def _walk(self, node, cls, self_cls):
        for child in ast.iter_child_nodes(node):
            c_cls, c_self = cls, self_cls
            if isinstance(child, ast.ClassDef):
                self.classes[child.name] = [_base_name(b) for b in child.bases]
                self.idents.add(child.name)
                for b in child.body:
                    for n in _bound_in_class(b):
                        self.members[n].add(child.name)
                c_cls, c_self = child.name, None
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not isinstance(child, ast.Lambda):
                    self.idents.add(child.name)
                args = child.args
                first = (args.posonlyargs + args.args)[:1]
                if cls is not None and isinstance(node, ast.ClassDef) and first \
                        and first[0].arg == "self":
                    c_self = cls  # a method: `self` inside it is an instance of cls
                c_cls = None
            self._note(child, self_cls if not isinstance(child, ast.ClassDef) else None)
            self._walk(child, c_cls, c_self)

    def _note(self, n, self_cls):
        if isinstance(n, ast.Name):
            self.idents.add(n.id)
        elif isinstance(n, ast.arg):
            self.idents.add(n.arg)
            self.params.add(n.arg)
        elif isinstance(n, ast.Attribute):
            self.idents.add(n.attr)
            is_self = isinstance(n.value, ast.Name) and n.value.id == "self"
            self.attrs[n.attr].append(self_cls if is_self else None)
        elif isinstance(n, ast.keyword) and n.arg:
            self.idents.add(n.arg)
            self.keywords.add(n.arg)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            self.idents.update(n.names)
            if isinstance(n, ast.Global):
                self.module_level.update(n.names)
        elif isinstance(n, ast.alias):
            for part in n.name.split(".") + ([n.asname] if n.asname else []):
                self.idents.add(part)
                self.imported.add(part)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            self.idents.add(n.name)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            self.strings.add(n.value)
        elif isinstance(n, ast.JoinedStr):
            for sub in ast.walk(n):
                if isinstance(sub, ast.Name):
                    self.in_fstrings.add(sub.id)
                elif isinstance(sub, ast.Attribute):
                    self.in_fstrings.add(sub.attr)

    def _module_level(self, node):
        for n in _bound_at(node):
            self.module_level.add(n)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                self.aliases[a.asname or a.name] = node.module + "." + a.name
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    self.aliases[a.asname] = a.name
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "const"
                and len(node.value.args) == 1):
            name = node.targets[0].id
            value = _const_value(node.value.args[0], self.values)
            if value is not None:
                self.values[name] = value
            if name.startswith("_"):
                self.folded.add(name)
            else:
                self.consts[name] = value  # None: not one this module can write in elsewhere


def _base_name(b):
    if isinstance(b, ast.Name):
        return b.id
    if isinstance(b, ast.Attribute):
        return b.attr
    return None


def _bound_in_class(stmt):
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    return _bound_at(stmt)


def _bound_at(stmt):
    """Names a top-level statement binds (assignments, defs, classes, imports, and what
    an if/try at that level binds)."""
    out = []
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names]
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for t in targets:
            out += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
        return out
    if isinstance(stmt, (ast.For, ast.With)):
        target = stmt.target if isinstance(stmt, ast.For) else None
        if target is not None:
            out += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    for field in ("body", "orelse", "finalbody", "handlers"):
        for sub in getattr(stmt, field, []) or []:
            if isinstance(sub, ast.ExceptHandler):
                out += [sub.name] if sub.name else []
                for s in sub.body:
                    out += _bound_at(s)
            else:
                out += _bound_at(sub)
    return out


def _const_value(node, known):
    """The value of a constant expression: a str or bytes literal, or integers (literals,
    known constants, + - * // << >> | & ~ and unary -); None for anything else."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, str, bytes):
        return node.value
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert)):
        v = _const_value(node.operand, known)
        if type(v) is not int:
            return None
        return -v if isinstance(node.op, ast.USub) else ~v
    if isinstance(node, ast.BinOp):
        a, b = _const_value(node.left, known), _const_value(node.right, known)
        if type(a) is not int or type(b) is not int:
            return None
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.FloorDiv: lambda: a // b if b else None, ast.LShift: lambda: a << b,
               ast.RShift: lambda: a >> b, ast.BitOr: lambda: a | b,
               ast.BitAnd: lambda: a & b}
        f = ops.get(type(node.op))
        return f() if f is not None and not (isinstance(node.op, ast.LShift) and b > 64) \
            else None
    return None


def _hierarchies(mods):
    """class name -> the set of modules that define a class in its hierarchy (its bases
    and subclasses, transitively, among the firmware's own classes)."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    where = defaultdict(set)
    for m in mods:
        for cls, bases in m.classes.items():
            where[cls].add(m.name)
            for b in bases:
                if b is not None:
                    parent[find(cls)] = find(b)
    groups = defaultdict(set)
    for cls in where:
        groups[find(cls)] |= where[cls]
    return {cls: groups[find(cls)] for cls in where}


def _occurrences(m, name):
    """How many times `name` appears in module m as an identifier, how many of those are
    `alias.name` reads of a module the alias stands for, and how many are attributes."""
    total = reads = attrs = 0
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Attribute) and node.attr == name:
            attrs += 1
        for field in ("id", "arg", "attr", "name"):
            if getattr(node, field, None) == name and not isinstance(node, ast.alias):
                total += 1
        if isinstance(node, (ast.Global, ast.Nonlocal)) and name in node.names:
            total += 1
        if isinstance(node, ast.alias) and name in (node.asname, node.name):
            total += 1
        if (isinstance(node, ast.Attribute) and node.attr == name
                and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name)
                and node.value.id in m.aliases and node.value.id not in m.params):
            reads += 1
    return total, reads, attrs


def plan(sources, keep=()):
    """({module: {name: stand-in}}, {module: {(alias, NAME): value}}) for {module: text}.
    Modules in `keep` are read (their names count) but get no renames."""
    mods = [_Module(name, text) for name, text in sorted(sources.items())]
    by_name = {m.name: m for m in mods}
    where = defaultdict(set)
    strings, fstr, kws, module_level, attr_names, imported = (set() for _ in range(6))
    for m in mods:
        for n in m.idents:
            where[n].add(m.name)
        strings |= m.strings
        fstr |= m.in_fstrings
        kws |= m.keywords
        module_level |= m.module_level
        attr_names |= set(m.attrs) | set(m.members)
        imported |= m.imported
    never = (strings | fstr | kws | imported | set(dir(builtins)) | set(STATIC_NAMES)
             | set(keyword.kwlist) | {"self", "cls"})
    used = set(where) | strings
    free = [s for s in STATIC_NAMES if s not in used and s.isidentifier()
            and not keyword.iskeyword(s)]
    free.sort(key=lambda s: s[0].isupper())  # in a traceback `in zip` reads less oddly than
    # `in NameError`: the lower-case names first (a stable sort keeps the order otherwise)
    hier = _hierarchies(mods)

    # public constants: folded where they are (NAME -> _NAME) when every other module
    # reads them only as alias.NAME, which then gets the value written in
    renames = {m.name: {} for m in mods}
    inline = defaultdict(dict)
    for m in mods:
        if m.name in keep:
            continue
        for name, value in m.consts.items():
            if ("_" + name) in m.idents or name in m.params or name in never:
                continue
            if any(a.attr == name for a in ast.walk(m.tree) if isinstance(a, ast.Attribute)):
                continue
            readers = {}
            for other in where[name] - {m.name}:
                o = by_name[other]
                o_total, o_reads, o_attrs = _occurrences(o, name)
                # another module may read it as alias.NAME (written in), or have a NAME of
                # its own (bound there, not imported): nothing else
                own = name in o.module_level and name not in o.imported
                if other in keep or o_attrs != o_reads or (o_total != o_reads and not own) \
                        or (o_reads and value is None):
                    break
                readers[other] = [a for a, t in o.aliases.items() if t == m.name]
            else:
                renames[m.name][name] = "_" + name
                for other, aliases in readers.items():
                    for a in aliases:
                        inline[other][(a, name)] = value

    taken = defaultdict(set)  # class hierarchy (its modules) -> stand-ins of attributes
    for m in mods:
        if m.name in keep:
            continue
        attrs, others = [], []
        for name in sorted(m.idents):
            if name in never or name in renames[m.name] or name in m.folded:
                continue
            if _is_private(name) and where[name] == {m.name}:
                if name in attr_names:
                    owners = set(m.attrs.get(name, [])) | m.members.get(name, set())
                    if None in owners:
                        continue  # read off something that is not `self`
                    attrs.append((name, {frozenset(hier.get(c, {m.name})) for c in owners}))
                else:
                    others.append(name)
            elif (name in m.params and name not in attr_names and name not in module_level
                  and not _is_private(name)):
                others.append(name)  # a parameter: a local wherever it appears
        mine = set()
        for name, groups in attrs:
            # an attribute's stand-in is unique in each class hierarchy it lives in, so
            # two modules' renamed attributes never meet on one object, and is no method
            # of a built-in type a class might derive from (dict.update, list.copy)
            pick = next((s for s in free if s not in mine and s not in _BUILTIN_ATTRS
                         and not any(s in taken[g] for g in groups)), None)
            if pick is None:
                continue  # no ROM name left: keeping the name costs what renaming would
            mine.add(pick)
            for g in groups:
                taken[g].add(pick)
            renames[m.name][name] = pick
        for name in others:  # module-level and local names: this module's own namespace
            pick = next((s for s in free if s not in mine), None)
            if pick is None:
                continue
            mine.add(pick)
            renames[m.name][name] = pick
    return renames, dict(inline)


def _apply(text, rename, inline):
    """The source with every NAME token in `rename` replaced and each `alias . NAME` of
    `inline` replaced by its value; lines stay where they are."""
    toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    edits = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if (t.type == tokenize.NAME and i + 2 < len(toks) and toks[i + 1].string == "."
                and toks[i + 2].type == tokenize.NAME
                and (t.string, toks[i + 2].string) in inline
                and (i == 0 or toks[i - 1].string != ".")):
            end = toks[i + 2]
            if t.start[0] == end.end[0]:
                edits.append((t.start, end.end, repr(inline[(t.string, end.string)])))
                i += 3
                continue
        if t.type == tokenize.NAME and t.string in rename:
            edits.append((t.start, t.end, rename[t.string]))
        i += 1
    lines = text.splitlines(keepends=True)
    for (row, c0), (_, c1), new in sorted(edits, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:c0] + new + line[c1:]
    return "".join(lines)


class _Expected(ast.NodeTransformer):
    def __init__(self, rename, inline):
        self.rename, self.inline = rename, inline

    def _r(self, name):
        return self.rename.get(name, name)

    def visit_Attribute(self, node):
        if (isinstance(node.value, ast.Name) and isinstance(node.ctx, ast.Load)
                and (node.value.id, node.attr) in self.inline):
            return ast.copy_location(ast.Constant(self.inline[(node.value.id, node.attr)]),
                                     node)
        self.generic_visit(node)
        node.attr = self._r(node.attr)
        return node

    def generic_visit(self, node):
        super().generic_visit(node)
        for field in ("id", "arg", "name"):
            v = getattr(node, field, None)
            if isinstance(v, str) and not isinstance(node, ast.alias):
                setattr(node, field, self._r(v))
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            node.names = [self._r(n) for n in node.names]
        return node


def minify(sources, keep=()):
    """({module: new text}, {module: {stand-in: original name}}) for {module: text}; the
    modules in `keep` are read but not renamed (nor returned).
    Raises MinifyError if a renamed module does not parse to the renamed original."""
    renames, inlines = plan(sources, keep)
    out, names = {}, {}
    for mod, text in sources.items():
        if mod in keep:
            continue
        rename, inline = renames.get(mod, {}), inlines.get(mod, {})
        new = _apply(text, rename, inline)
        expected = _Expected(rename, inline).visit(ast.parse(text))
        if ast.dump(ast.parse(new)) != ast.dump(expected):
            raise MinifyError(f"{mod}: the renamed source is not the renamed original")
        out[mod] = new
        names[mod] = {v: k for k, v in rename.items()}
    return out, names
