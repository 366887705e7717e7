#!/usr/bin/env python3
"""Lists import circles between the modules of each crate (a module uses another when it
names `crate::other` or `super::other` outside its tests), and the modules the error
rendering depends on. Exit status 1 if a circle is found.

    tests/tools/module_cycles.py
"""
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def modules(src):
    """module name -> source text (tests removed), for every .rs file under src."""
    out = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)[:-3]
            parts = rel.split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            name = "::".join(parts) or "crate"
            text = open(path).read()
            cut = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
            text = text[: cut.start()] if cut else text
            # Doc links and comments name modules without using them.
            out[name] = re.sub(r"//[^\n]*", "", text)
    return out


def uses(name, text, names):
    found = set()
    for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*)", text):
        found.add(m.group(1))
    parent = name.rsplit("::", 1)[0] if "::" in name else ""
    for m in re.finditer(r"\bsuper::([a-z_][a-z0-9_]*)", text):
        target = f"{parent}::{m.group(1)}" if parent else m.group(1)
        found.add(target)
    top = name.split("::")[0]
    # A module's own children and itself are not dependencies.
    return {t for t in found if t in names and t != name and t != top and not t.startswith(name + "::")}


def cycles(graph):
    found, stack, on_stack, seen = [], [], set(), set()

    def visit(node):
        seen.add(node)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in {frozenset(c) for c in found}:
                    found.append(cycle)
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        on_stack.discard(node)

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    return found


status = 0
for crate in sorted(os.listdir(os.path.join(ROOT, "crates"))):
    src = os.path.join(ROOT, "crates", crate, "src")
    mods = modules(src)
    names = set(mods)
    graph = {n: uses(n, t, names) for n, t in mods.items()}
    found = cycles(graph)
    if found:
        status = 1
        for c in found:
            print(f"{crate}: import circle: {' -> '.join(c)}")
    else:
        print(f"{crate}: {len(mods)} modules, no import circle")
    if crate == "proxy":
        print(f"proxy: errors uses {sorted(graph.get('errors', ())) or 'nothing of the crate'}; "
              f"problem uses {sorted(graph.get('problem', ()))}")
sys.exit(status)
