#!/usr/bin/env python3
"""Reports dependency cycles between the crates of the workspace.

Cargo accepts a cycle through a dev-dependency (A depends on B, B
dev-depends on A), but it means a crate's tests build against a second
copy of the crate, and it hides layering mistakes: test support that only
works if a low crate knows a high one. So here every kind of dependency
(normal, dev, build) between workspace members is an edge, and any cycle
fails. A crate dev-depending on itself (to turn on its own features for its
tests, as relay-core does) is the one exception: that is not a second crate.

Reads `cargo metadata --format-version 1 --no-deps` (no network, no build).

Usage: scripts/crate_cycles.py
Exit status 1 when a cycle is found.
"""
import json, os, subprocess, sys


def graph(meta):
    """Edges among workspace members: {crate: {dependency: {kinds}}}."""
    members = {p['id']: p for p in meta['packages'] if p['id'] in meta['workspace_members']}
    names = {p['name'] for p in members.values()}
    g = {p['name']: {} for p in members.values()}
    for p in members.values():
        for d in p['dependencies']:
            if d['name'] in names:
                g[p['name']].setdefault(d['name'], set()).add(d['kind'] or 'normal')
    return g


def cycles(g):
    """Cycles met by a depth-first search (at least one whenever there is any;
    self-edges excluded)."""
    found, color, stack = [], {}, []

    def dfs(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(g[u]):
            if v == u:
                continue
            if color.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif not color.get(v):
                dfs(v)
        stack.pop()
        color[u] = 2

    for u in sorted(g):
        if not color.get(u):
            dfs(u)
    return found


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        ['cargo', 'metadata', '--format-version', '1', '--no-deps'],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    g = graph(json.loads(out))
    bad = cycles(g)
    for cyc in bad:
        hops = []
        for a, b in zip(cyc, cyc[1:]):
            hops.append(f'{a} -[{"/".join(sorted(g[a][b]))}]-> ')
        print('cycle: ' + ''.join(hops) + cyc[-1])
    if bad:
        sys.exit(1)
    edges = sum(len([d for d in deps if d != c]) for c, deps in g.items())
    selfs = sorted(c for c, deps in g.items() if c in deps)
    note = f" (self dev-dependency for features: {', '.join(selfs)})" if selfs else ''
    print(f'{len(g)} workspace crates, {edges} dependency edges, no cycles{note}')


if __name__ == '__main__':
    main()
