#!/usr/bin/env python3
"""Every document the repository cites must be in the repository.

Scans tracked source, script and Markdown files for references to Markdown
documents (`docs/ARCHITECTURE.md`, `CHANGELOG.md`, `../README.md`, …) and to
repository paths under `docs/`, `scripts/`, `deploy/` and `load/`, and fails
when one does not resolve — relative to the citing file or to the repository
root. Keeps the project's contract readable from a clone: nothing may point
at a design file that lives elsewhere.
"""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = ("fuzz/corpus/", "fuzz/regressions/", "pipeline-scan/tests/fixtures/")
EXTS = (".rs", ".md", ".sh", ".py", ".toml", ".yaml", ".yml", ".mjs", ".js", ".html")
MD = re.compile(r"(?<![\w/.-])((?:\.\./|\./)*(?:[\w.-]+/)*[A-Z][A-Z0-9_]*\.md)\b")
PATH = re.compile(r"(?<![\w/.-])((?:docs|scripts|deploy|load)/[\w./-]*\.[a-z]{2,5})\b")


def tracked():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.splitlines() if p.endswith(EXTS) and not p.startswith(SKIP)]


def resolves(ref: str, citing: Path) -> bool:
    ref = ref.rstrip(".")
    for base in (citing.parent, ROOT):
        if (base / ref).exists():
            return True
    return False


def main() -> int:
    missing = []
    for rel in tracked():
        path = ROOT / rel
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for rx in (MD, PATH):
                for m in rx.finditer(line):
                    ref = m.group(1)
                    if "<" in ref or "*" in ref or "{" in ref:
                        continue
                    msg = f"{rel}:{n}: cites {ref}, which is not in the repository"
                    if not resolves(ref, path) and msg not in missing:
                        missing.append(msg)
    for m in missing:
        print(m, file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
