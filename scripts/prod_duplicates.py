#!/usr/bin/env python3
"""Count duplicates pairs whose both sides are production code: not under a
tests/ or benches/ or fuzz/ dir, not examples (reported separately), and not
inside a file's #[cfg(test)] module. Usage: duplicates --most 200 --seconds 120 > d.txt; python3 scripts/prod_duplicates.py d.txt . [-v]
The count the architecture work is measured by (production pairs only)."""
import re, sys, os
dups, repo = sys.argv[1], sys.argv[2]
cache = {}
def test_start(path):
    if path not in cache:
        start = None
        try:
            for i, line in enumerate(open(os.path.join(repo, path)), 1):
                if line.startswith("#[cfg(test)]"):
                    start = i; break
        except OSError:
            pass
        cache[path] = start
    return cache[path]
def is_prod(side):
    path, rng = side.rsplit(":", 1)
    a = int(rng.split("-")[0])
    if re.search(r'(^|/)(tests|benches|fuzz)/', path) or path.startswith(("tests/", "benches/", "fuzz/")):
        return False
    if "testing" in path or "testkit" in path or path.startswith("src/"):
        return False
    t = test_start(path)
    return t is None or a < t
rows = []
for line in open(dups):
    m = re.match(r'^(D\d+) (\S+) ~ (\S+)(.*)$', line.strip())
    if not m: continue
    if is_prod(m.group(2)) and is_prod(m.group(3)):
        rows.append(line.strip())
ex = [r for r in rows if "/examples/" in r]
print(len(rows), "production pairs (incl.", len(ex), "touching examples)")
for r in rows:
    if "-v" in sys.argv: print(r)
