#!/usr/bin/env python3
"""Offline checks of relay's deployment files (deploy/): quiet on success.

Why: the Kubernetes manifests, the KEDA ScaledObjects and the Grafana
dashboard name things the Rust sources define (RELAY_* variables, ports and
routes, metric names, queue names, the shard count). Nothing else ties them
together, so a renamed flag or metric would leave a manifest that applies
cleanly and then silently misbehaves. This script fails instead:

1. every manifest under deploy/kubernetes validates against the Kubernetes
   JSON schemas bundled with the `kubernetes-validate` package, in strict mode
   (unknown fields are errors), for Kubernetes 1.30 and the newest bundled
   version; a kind with no schema is an error, not a warning;
2. every KEDA ScaledObject validates against the vendored KEDA schema
   (deploy/schemas/keda-scaledobject-v1alpha1.json, where it comes from is in
   its `$comment`) with `jsonschema`, plus the CRD's CEL rule min <= max;
3. every environment variable a container gets (env and envFrom, resolved
   through the ConfigMaps and Secrets defined here) is one its binary really
   reads: a RELAY_* name must be the `env = "..."` of a clap field of that
   binary (and subcommand), parsed from the sources; any other name must
   appear as a string literal in the binary's sources;
4. probes and scrape annotations point at a port whose address variable binds
   a non-loopback address and whose listener serves that path (the route
   literal must be in the binary's sources);
5. metric names in KEDA Prometheus queries and in deploy/grafana/*.json are
   metrics the binaries register (a registry prefix + a registered name +
   an exposition suffix);
6. scaling rules: the router's maxReplicaCount is at most RELAY_SHARDS (a
   shard has one owner), the workers' rabbitmq triggers cover exactly the
   stage queues `{RELAY_QUEUE_PREFIX}.{stage}` (stage names from the
   sources), `hostFromEnv` names a variable of the target container;
7. every manifest file is listed by a kustomization (except examples/), and
   every kustomization entry exists.

The first run creates a private virtualenv with the pinned packages (PyPI
only) under $XDG_CACHE_HOME (or ~/.cache)/relay/; later runs reuse it and
take a few seconds. `RELAY_VALIDATE_VENV` overrides the location.

    python3 scripts/validate_manifests.py          # from anywhere in the repo
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
KEDA_SCHEMA = DEPLOY / "schemas" / "keda-scaledobject-v1alpha1.json"
DASHBOARDS = DEPLOY / "grafana"

# The pinned validator: it bundles the Kubernetes schemas of 1.25 to 1.37.
REQUIREMENTS = ["kubernetes-validate==1.37.0"]
K8S_VERSIONS = ["1.30.0", "1.37.0"]

# ---------------------------------------------------------------------------
# Bootstrap: run inside the private venv.
# ---------------------------------------------------------------------------


def venv_dir() -> Path:
    if os.environ.get("RELAY_VALIDATE_VENV"):
        return Path(os.environ["RELAY_VALIDATE_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = "-".join(r.replace("==", "-") for r in REQUIREMENTS)
    return cache / "relay" / f"validate-manifests-{tag}"


def ensure_venv() -> None:
    """Re-executes this script with the venv's python, creating it if needed."""
    target = venv_dir()
    python = target / "bin" / "python"
    if Path(sys.prefix).resolve() == target.resolve():
        return
    stamp = target / ".installed"
    if not stamp.exists() or stamp.read_text() != "\n".join(REQUIREMENTS):
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
        cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        r = subprocess.run(cmd + REQUIREMENTS, capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stdout + r.stderr)
            sys.exit(f"validate_manifests: installing {REQUIREMENTS} into {target} failed")
        stamp.write_text("\n".join(REQUIREMENTS))
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


# ---------------------------------------------------------------------------
# What the Rust sources define.
# ---------------------------------------------------------------------------

# Each binary: the crates whose code it runs (its own first) and its clap root.
BINARIES = {
    "relay-router": (["relay-router", "relay-core"], "RouterArgs"),
    "relay-sse": (["relay-sse", "relay-core"], "Config"),
    "pipeline-scan": (["pipeline-scan", "relay-core"], "Cli"),
}
# pipeline-scan's subcommands are the variants of this enum (`Api(ApiArgs)`).
SUBCOMMAND_ENUM = "Command"

# Which address variable binds which routes, per binary (and subcommand).
# Each path must also be a route literal in the binary's sources.
LISTENERS = {
    ("relay-router", None): {"RELAY_METRICS_ADDR": ["/metrics", "/healthz", "/readyz"]},
    ("relay-sse", None): {
        "RELAY_LISTEN": ["/healthz", "/readyz", "/metrics"],
        "RELAY_METRICS_ADDR": ["/metrics"],
    },
    ("pipeline-scan", "api"): {"RELAY_LISTEN": ["/healthz", "/readyz", "/metrics"]},
    ("pipeline-scan", "worker"): {"RELAY_METRICS_ADDR": ["/metrics", "/healthz"]},
}

# Variables read by a library rather than by relay's own code.
LIBRARY_ENV = {"RUST_LOG": "tracing-subscriber's EnvFilter (relay_core::cli::init_tracing)"}

EXPOSITION_SUFFIXES = ["", "_total", "_bucket", "_count", "_sum", "_created"]


def source_text(path: Path) -> str:
    """A file's code before its `#[cfg(test)]` module (tests do not ship)."""
    text = path.read_text()
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


class Sources:
    """Facts parsed from the crates' non-test sources."""

    def __init__(self) -> None:
        self.files: dict[str, list[tuple[Path, str]]] = {}
        for crate in {c for crates, _ in BINARIES.values() for c in crates}:
            src = ROOT / crate / "src"
            self.files[crate] = [(p, source_text(p)) for p in sorted(src.rglob("*.rs"))]
        self.structs: dict[str, dict[str, list[tuple[list[str], str | None]]]] = {
            crate: self._structs(files) for crate, files in self.files.items()
        }

    @staticmethod
    def _structs(files: list[tuple[Path, str]]) -> dict[str, list[tuple[list[str], str | None]]]:
        """struct name -> fields as (env names, flattened type or None).

        Line-based: the sources are rustfmt-formatted (CI checks it), so a
        top-level struct's fields sit at four spaces and its body ends at `}`
        in column 0; a field's attributes are the lines since the previous one.
        """
        out: dict[str, list[tuple[list[str], str | None]]] = {}
        field = re.compile(r"^    (?:pub(?:\([^)]*\))?\s+)?(\w+):\s*(.+?),?\s*$")
        for _, text in files:
            lines = text.splitlines()
            i = 0
            while i < len(lines):
                m = re.match(r"^(?:pub(?:\([^)]*\))?\s+)?struct (\w+)\s*\{\s*$", lines[i])
                i += 1
                if not m:
                    continue
                fields, attrs = [], []
                while i < len(lines) and lines[i] != "}":
                    line = lines[i]
                    i += 1
                    if line.strip().startswith("//"):
                        continue
                    f = field.match(line)
                    if f and not line.startswith("     "):
                        attr = "\n".join(attrs)
                        attrs = []
                        if "subcommand" in attr:
                            continue
                        envs = re.findall(r'\benv\s*=\s*"([A-Z0-9_]+)"', attr)
                        flat = None
                        if "flatten" in attr:
                            types = [t for t in re.findall(r"\b([A-Z]\w*)", f.group(2))
                                     if t not in ("Option", "Vec", "Box")]
                            flat = types[0] if types else None
                        fields.append((envs, flat))
                    else:
                        attrs.append(line)
                out.setdefault(m.group(1), fields)
        return out

    def crates_of(self, binary: str) -> list[str]:
        return BINARIES[binary][0]

    def struct(self, binary: str, name: str) -> list[tuple[list[str], str | None]]:
        for crate in self.crates_of(binary):
            if name in self.structs[crate]:
                return self.structs[crate][name]
        raise LookupError(f"struct {name} not found in the sources of {binary}")

    def env_of(self, binary: str, name: str) -> set[str]:
        envs: set[str] = set()
        for names, flat in self.struct(binary, name):
            envs.update(names)
            if flat:
                envs |= self.env_of(binary, flat)
        return envs

    def subcommands(self, binary: str) -> dict[str, str]:
        """Subcommand name (clap's kebab-case of the variant) -> its args struct."""
        for crate in self.crates_of(binary)[:1]:
            for _, text in self.files[crate]:
                m = re.search(r"^pub enum %s \{\n(.*?)^\}" % SUBCOMMAND_ENUM, text, re.M | re.S)
                if m:
                    return {
                        re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower(): t
                        for v, t in re.findall(r"^    (\w+)\((\w+)\),", m.group(1), re.M)
                    }
        return {}

    def binary_env(self, binary: str, sub: str | None) -> set[str]:
        """The RELAY_* variables `binary [sub]` reads (clap `env = ...`)."""
        envs = self.env_of(binary, BINARIES[binary][1])
        if sub is not None:
            subs = self.subcommands(binary)
            if sub not in subs:
                raise LookupError(f"{binary} has no subcommand {sub!r} (has {sorted(subs)})")
            envs |= self.env_of(binary, subs[sub])
        return envs

    def text_of(self, binary: str) -> str:
        return "\n".join(t for c in self.crates_of(binary) for _, t in self.files[c])

    def all_text(self) -> str:
        return "\n".join(t for files in self.files.values() for _, t in files)

    def metric_prefixes(self) -> set[str]:
        text = self.all_text()
        found = set(re.findall(r'with_prefix\("([a-z_]+)"\)', text))
        found |= set(re.findall(r'append_to\([^;]*?,\s*"([a-z_]+)"\s*\)', text))
        found |= set(re.findall(r'METRICS_PREFIX:\s*&str\s*=\s*"([a-z_]+)"', text))
        return found

    def string_literals(self) -> set[str]:
        return set(re.findall(r'"([a-z][a-z0-9_]*)"', self.all_text()))

    def stage_names(self) -> list[str]:
        """The scan stages' names: the `NAME` of each stage under src/scan/,
        as many as `STAGE_NAMES: [&str; N]` says (empty if they disagree)."""
        names, count = [], None
        for path, text in self.files["pipeline-scan"]:
            if path.parent.name != "scan":
                continue
            names += re.findall(r'const NAME: &\'static str = "([a-z_]+)";', text)
            m = re.search(r"pub const STAGE_NAMES: \[&str; (\d+)\]", text)
            count = int(m.group(1)) if m else count
        return names if count == len(names) else []


# ---------------------------------------------------------------------------
# PromQL: the metric names an expression reads.
# ---------------------------------------------------------------------------

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "le",
}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in `expr`: identifiers that are not functions, keywords,
    label names (inside `{}` or a `by (...)`-like clause) or template variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # a unit or exponent of a number: 5m, 1e3
        names.add(m.group(0))
    return names


# ---------------------------------------------------------------------------
# The checks.
# ---------------------------------------------------------------------------


class Checker:
    def __init__(self) -> None:
        import yaml  # from the venv

        self.yaml = yaml
        self.errors: list[str] = []
        self.src = Sources()
        self.docs: list[tuple[Path, dict]] = []
        self.kustomizations: list[tuple[Path, dict]] = []
        for path in sorted(MANIFESTS.rglob("*.y*ml")):
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            if path.name == "kustomization.yaml":
                self.kustomizations.append((path, docs[0] if docs else {}))
            else:
                self.docs += [(path, d) for d in docs]

    def err(self, where: Path | str, msg: str) -> None:
        rel = where.relative_to(ROOT) if isinstance(where, Path) else where
        self.errors.append(f"{rel}: {msg}")

    def find(self, kind: str, name: str) -> dict | None:
        for _, d in self.docs:
            if d.get("kind") == kind and d.get("metadata", {}).get("name") == name:
                return d
        return None

    # 1, 2: schemas -------------------------------------------------------

    def schemas(self) -> None:
        import jsonschema
        import kubernetes_validate as kv

        keda = jsonschema.Draft202012Validator(json.loads(KEDA_SCHEMA.read_text()))
        for path, d in self.docs:
            what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
            if str(d.get("apiVersion", "")).startswith("keda.sh/"):
                if d.get("kind") != "ScaledObject":
                    self.err(path, f"{what}: no vendored schema for this KEDA kind")
                    continue
                for e in sorted(keda.iter_errors(d), key=lambda e: list(e.path)):
                    loc = ".".join(str(p) for p in e.path)
                    self.err(path, f"{what}: {loc}: {e.message}")
                spec = d.get("spec", {})
                if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
                    self.err(path, f"{what}: minReplicaCount must be <= maxReplicaCount")
                continue
            for version in K8S_VERSIONS:
                try:
                    kv.validate(d, version, strict=True)
                except kv.ValidationError as e:
                    loc = ".".join(str(p) for p in e.path)
                    self.err(path, f"{what} (Kubernetes {version}, strict): {loc}: {e.message}")
                except kv.SchemaNotFoundError:
                    self.err(path, f"{what}: no Kubernetes {version} schema for this kind")

    # 3, 4: containers ----------------------------------------------------

    def keys_of(self, kind: str, name: str) -> set[str] | None:
        d = self.find(kind, name)
        if d is None:
            return None
        return set(d.get("data") or {}) | set(d.get("stringData") or {})

    def container_env(self, path: Path, c: dict) -> dict[str, str | None]:
        """Name -> literal value (None when it comes from elsewhere)."""
        env: dict[str, str | None] = {}
        for src in c.get("envFrom", []):
            for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                if key in src:
                    name = src[key]["name"]
                    keys = self.keys_of(kind, name)
                    if keys is None:
                        self.err(path, f"container {c['name']}: envFrom {kind} {name} is not defined in deploy/kubernetes")
                        continue
                    obj = self.find(kind, name) or {}
                    values = {**(obj.get("data") or {}), **(obj.get("stringData") or {})}
                    for k in keys:
                        env[k] = values.get(k) if kind == "ConfigMap" else None
        for e in c.get("env", []):
            env[e["name"]] = e.get("value")
            ref = e.get("valueFrom", {})
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if key in ref and not ref[key].get("optional"):
                    keys = self.keys_of(kind, ref[key]["name"])
                    if keys is None or ref[key]["key"] not in keys:
                        self.err(path, f"container {c['name']}: {e['name']} refers to {kind} {ref[key]['name']} key {ref[key]['key']}, not defined in deploy/kubernetes")
        return env

    def containers(self) -> None:
        for path, d in self.docs:
            if d.get("kind") != "Deployment":
                continue
            pod = d["spec"]["template"]
            for c in pod["spec"]["containers"]:
                self.container(path, d, pod, c)

    def container(self, path: Path, deploy: dict, pod: dict, c: dict) -> None:
        who = f"Deployment/{deploy['metadata']['name']} container {c['name']}"
        cmd = (c.get("command") or [""])[0]
        if cmd not in BINARIES:
            self.err(path, f"{who}: command {cmd!r} is not one of {sorted(BINARIES)}")
            return
        sub = (c.get("args") or [None])[0] if self.src.subcommands(cmd) else None
        try:
            reads = self.src.binary_env(cmd, sub)
        except LookupError as e:
            self.err(path, f"{who}: {e}")
            return
        env = self.container_env(path, c)
        text = self.src.text_of(cmd)
        for name in sorted(env):
            if name.startswith("RELAY_"):
                if name not in reads:
                    self.err(path, f"{who}: {name} is not read by `{cmd}{' ' + sub if sub else ''}` (no clap `env = \"{name}\"` there)")
            elif name not in LIBRARY_ENV and f'"{name}"' not in text:
                self.err(path, f"{who}: {name} is not read by {cmd} (no \"{name}\" in its sources)")

        listeners = LISTENERS.get((cmd, sub), {})
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
        served: dict[int, set[str]] = {}
        for var, paths in listeners.items():
            addr = env.get(var)
            if not addr:
                continue
            host, _, port = addr.rpartition(":")
            if not port.isdigit():
                self.err(path, f"{who}: {var}={addr} is not HOST:PORT")
                continue
            if host in ("127.0.0.1", "localhost", "[::1]"):
                self.err(path, f"{who}: {var}={addr} binds loopback: probes and scrapes cannot reach it")
            served.setdefault(int(port), set()).update(paths)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c.get(probe, {}).get("httpGet")
            if not get:
                continue
            port = ports.get(get["port"], get["port"])
            self.route(path, f"{who} {probe}", cmd, get["path"], port, served)
        ann = pod.get("metadata", {}).get("annotations", {})
        if ann.get("prometheus.io/scrape") == "true":
            port = int(ann.get("prometheus.io/port", "0"))
            if port not in ports.values():
                self.err(path, f"{who}: prometheus.io/port {port} is not a container port")
            self.route(path, f"{who} scrape", cmd, ann.get("prometheus.io/path", "/metrics"), port, served)

        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        stage = int(env.get("RELAY_STAGE_TIMEOUT_SECS") or 0)
        if grace <= pre + stage:
            self.err(path, f"{who}: terminationGracePeriodSeconds {grace} leaves no time to drain after preStop ({pre} s) and a stage run ({stage} s)")

    def route(self, path: Path, who: str, cmd: str, route: str, port: object,
              served: dict[int, set[str]]) -> None:
        if port not in served:
            self.err(path, f"{who}: port {port} is not bound by any address variable of {cmd} set in the container")
        elif route not in served[port]:
            self.err(path, f"{who}: {route} is not served on port {port} by {cmd}")
        if f'"{route}"' not in self.src.text_of(cmd):
            self.err(path, f"{who}: {route} is not a route in the sources of {cmd}")

    # 5: metrics ----------------------------------------------------------

    def metric_known(self, name: str) -> bool:
        literals = self.src.string_literals()
        for prefix in self.src.metric_prefixes():
            if not name.startswith(prefix + "_"):
                continue
            rest = name[len(prefix) + 1:]
            for suffix in EXPOSITION_SUFFIXES:
                if rest.endswith(suffix) and rest[: len(rest) - len(suffix)] in literals:
                    return True
        return False

    def check_expr(self, where: Path, what: str, expr: str) -> None:
        names = promql_metrics(expr)
        if not names:
            self.err(where, f"{what}: no metric in query {expr!r}")
        for n in sorted(names):
            if not self.metric_known(n):
                self.err(where, f"{what}: metric {n} is not exported by any relay binary")

    def dashboards(self) -> None:
        for path in sorted(DASHBOARDS.glob("*.json")):
            try:
                dash = json.loads(path.read_text())
            except ValueError as e:
                self.err(path, f"not JSON: {e}")
                continue
            ids = []
            stack = list(dash.get("panels", []))
            while stack:
                p = stack.pop()
                stack += p.get("panels", [])
                ids.append(p.get("id"))
                for t in p.get("targets", []):
                    if "expr" in t:
                        self.check_expr(path, f"panel {p.get('title')!r}", t["expr"])
            if len(ids) != len(set(ids)) or None in ids:
                self.err(path, "every panel needs a unique id")

    # 6: scaling ----------------------------------------------------------

    def scaling(self) -> None:
        stages = self.src.stage_names()
        if not stages:
            self.err("pipeline-scan/src", "no stage names (`const NAME: &'static str`) found")
        for path, d in self.docs:
            if d.get("kind") != "ScaledObject":
                continue
            spec = d["spec"]
            what = f"ScaledObject/{d['metadata']['name']}"
            target = self.find(spec["scaleTargetRef"].get("kind", "Deployment"), spec["scaleTargetRef"]["name"])
            if target is None:
                self.err(path, f"{what}: scale target {spec['scaleTargetRef']['name']} is not defined in deploy/kubernetes")
                continue
            if "replicas" in target["spec"]:
                self.err(path, f"{what}: its target sets spec.replicas; `kubectl apply` would fight the autoscaler")
            c = target["spec"]["template"]["spec"]["containers"][0]
            env = self.container_env(path, c)
            cmd = (c.get("command") or [""])[0]
            if cmd == "relay-router":
                shards = int(env.get("RELAY_SHARDS") or 4)
                if spec.get("maxReplicaCount", 100) > shards:
                    self.err(path, f"{what}: maxReplicaCount {spec.get('maxReplicaCount', 100)} > RELAY_SHARDS {shards}: a shard has one owner, extra routers idle")
            queues = set()
            for t in spec["triggers"]:
                md = t["metadata"]
                if t["type"] == "prometheus":
                    self.check_expr(path, f"{what} trigger {t.get('name')}", md.get("query", ""))
                elif t["type"] == "rabbitmq":
                    if md.get("hostFromEnv") and md["hostFromEnv"] not in env:
                        self.err(path, f"{what}: hostFromEnv {md['hostFromEnv']} is not set in the target container")
                    queues.add(md.get("queueName"))
                else:
                    self.err(path, f"{what}: trigger type {t['type']} is not checked by this script")
            if queues:
                prefix = env.get("RELAY_QUEUE_PREFIX") or "scan"
                want = {f"{prefix}.{s}" for s in stages}
                if queues != want:
                    self.err(path, f"{what}: rabbitmq triggers watch {sorted(queues)}, the stage queues are {sorted(want)}")

    # 7: kustomizations ---------------------------------------------------

    def kustomize(self) -> None:
        listed: set[Path] = set()
        for path, k in self.kustomizations:
            for r in k.get("resources", []):
                p = (path.parent / r).resolve()
                if p.is_dir():
                    if not (p / "kustomization.yaml").exists():
                        self.err(path, f"resource {r}: directory without kustomization.yaml")
                elif p.is_file():
                    listed.add(p)
                else:
                    self.err(path, f"resource {r} does not exist")
        for path in {p for p, _ in self.docs}:
            if "examples" not in path.relative_to(MANIFESTS).parts and path.resolve() not in listed:
                self.err(path, "not listed in any kustomization.yaml")

    def run(self) -> int:
        self.schemas()
        self.containers()
        self.scaling()
        self.dashboards()
        self.kustomize()
        for e in dict.fromkeys(self.errors):  # once each, in order
            print(f"validate_manifests: {e}", file=sys.stderr)
        return 1 if self.errors else 0


if __name__ == "__main__":
    ensure_venv()
    sys.exit(Checker().run())
