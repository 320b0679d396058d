#!/usr/bin/env python3
"""Reports import cycles between the modules of each crate in the workspace.

A module is a source file under a crate's src/ (src/a/mod.rs is module `a`,
src/a/b.rs is `a::b`). An edge A -> B is any `crate::B...` path in A's code
outside `#[cfg(test)]` modules, resolved to the longest existing module
prefix (`super::` and `self::` paths are resolved relative to A). Two
modules that import each other are a cycle: the architecture asks shared
types to live in the lower module. Paths written
relative to the current module (`use child::X` in a parent) are not
followed: a module and its own child modules (impl blocks of the parent's
types split by concept) are one unit.

Usage: scripts/module_cycles.py [crate_dir ...]   (default: every member)
Exit status 1 when a cycle is found.
"""
import os, re, sys

def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == 'mod':
                rel = rel[:-1]
            if rel in (['lib'], ['main']):
                rel = []
            if rel and rel[0] == 'bin':
                continue
            mods['::'.join(rel)] = path
    return mods

def strip_tests(text):
    # Cut `#[cfg(test)] mod ... { ... }` blocks (brace matching).
    out, i = [], 0
    for m in re.finditer(r'#\[cfg\(test\)\]\s*mod\s+\w+\s*\{', text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {'{': 1, '}': -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    text = ''.join(out)
    return re.sub(r'//[^\n]*', '', text)

def resolve(path, mods):
    parts = path.split('::')
    for n in range(len(parts), 0, -1):
        cand = '::'.join(parts[:n])
        if cand in mods:
            return cand
    return None

def edges(mods):
    g = {m: set() for m in mods}
    for m, path in mods.items():
        text = strip_tests(open(path, encoding='utf-8').read())
        here = m.split('::') if m else []
        # use-groups: expand `crate::a::{b, c::d}` one level
        for grp in re.finditer(r'\b(crate|super|self)((?:::\w+)*)::\{([^}]*)\}', text):
            base = grp.group(1) + grp.group(2)
            for item in grp.group(3).split(','):
                item = item.strip().split(' as ')[0]
                if item:
                    add(g, mods, m, here, base + '::' + item)
        for p in re.finditer(r'\b((?:crate|super|self)(?:::\w+)+)', text):
            add(g, mods, m, here, p.group(1))
    return g

def add(g, mods, m, here, path):
    parts = path.split('::')
    if parts[0] == 'crate':
        parts = parts[1:]
    else:
        # `self` in a mod.rs/lib.rs is the module itself; in a file module
        # its parent is `super`.
        base = list(here)
        while parts and parts[0] in ('super', 'self'):
            if parts[0] == 'super':
                base = base[:-1]
            parts = parts[1:]
        parts = base + parts
    target = resolve('::'.join(parts), mods) if parts else ''
    if target is not None and target != m:
        g[m].add(target)

def cycles(g):
    found = []
    for a in g:
        for b in g[a]:
            if a < b and a in g.get(b, ()):
                found.append((a, b))
    # longer cycles: DFS
    color, stack, long = {}, [], []
    def dfs(u):
        color[u] = 1
        stack.append(u)
        for v in g[u]:
            if color.get(v) == 1:
                cyc = stack[stack.index(v):]
                if len(cyc) > 2:
                    long.append(cyc)
            elif not color.get(v):
                dfs(v)
        stack.pop()
        color[u] = 2
    for u in g:
        if not color.get(u):
            dfs(u)
    return found, long

def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    crates = sys.argv[1:] or ['.', 'relay-core', 'relay-router', 'relay-sse', 'pipeline-scan', 'relay-load', 'relay-testkit']
    bad = False
    for c in crates:
        src = os.path.join(root, c, 'src')
        if not os.path.isdir(src):
            continue
        mods = modules(src)
        pairs, long = cycles(edges(mods))
        name = os.path.basename(os.path.abspath(os.path.join(root, c)))
        for a, b in pairs:
            print(f'{name}: {a or "(root)"} <-> {b or "(root)"}')
            bad = True
        for cyc in long:
            print(f'{name}: cycle ' + ' -> '.join(x or '(root)' for x in cyc + [cyc[0]]))
            bad = True
        if not pairs and not long:
            print(f'{name}: {len(mods)} modules, no import cycles')
    sys.exit(1 if bad else 0)

if __name__ == '__main__':
    main()
