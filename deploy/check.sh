#!/usr/bin/env bash
# Offline checks of the deployment files; builds nothing and contacts no cluster.
#   1. every deploy/**/*.yaml parses (PyYAML), with light structural checks:
#      Kubernetes objects have apiVersion/kind/metadata.name, the kustomization lists existing files,
#      the compose files name their services, KEDA triggers name stream, consumerGroup and address;
#   2. `docker compose config` (or docker-compose) on the compose files, when available;
#   3. `kubectl kustomize deploy/k8s`, when kubectl is available.
# Usage: deploy/check.sh   (from anywhere)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

py=python3
if ! python3 -c 'import yaml' 2>/dev/null; then
    venv="${TMPDIR:-/tmp}/sd-deploy-yamlcheck"
    if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
    "$venv/bin/python" -c 'import yaml' 2>/dev/null || "$venv/bin/pip" install -q pyyaml
    py="$venv/bin/python"
fi

echo "== YAML parse ($("$py" -c 'import yaml; print("PyYAML", yaml.__version__)'))"
"$py" - "$here" <<'PY'
import pathlib, sys, yaml

root = pathlib.Path(sys.argv[1])
files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
               and "models" not in p.relative_to(root).parts)
problems = []

def need(cond, where, what):
    if not cond:
        problems.append(f"{where}: {what}")

for path in files:
    rel = path.relative_to(root.parent)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problems.append(f"{rel}: does not parse: {e}")
        print(f"FAIL {rel}")
        continue
    for i, d in enumerate(docs):
        where = f"{rel} [document {i}]"
        need(isinstance(d, dict), where, "is not a mapping")
        if not isinstance(d, dict):
            continue
        if path.name.startswith("docker-compose"):
            need(isinstance(d.get("services"), dict) and d["services"], where, "has no services")
            for name, svc in (d.get("services") or {}).items():
                need(isinstance(svc, dict) and ("image" in svc or "build" in svc), where,
                     f"service {name} has neither image nor build")
        elif d.get("kind") == "Kustomization":
            for res in d.get("resources", []):
                need((path.parent / res).is_file(), where, f"resource {res} does not exist")
        else:
            need("apiVersion" in d and "kind" in d, where, "lacks apiVersion or kind")
            need(bool((d.get("metadata") or {}).get("name")), where, "lacks metadata.name")
            if d.get("kind") == "ScaledObject":
                for t in d["spec"].get("triggers", []):
                    m = t.get("metadata", {})
                    if t.get("type") == "redis-streams":
                        for key in ("stream", "consumerGroup"):
                            need(key in m, where, f"redis-streams trigger lacks {key}")
                        need(any(k in m for k in ("address", "addressFromEnv", "host", "hostFromEnv")),
                             where, "redis-streams trigger lacks an address")
                        need(all(isinstance(v, str) for v in m.values()), where,
                             "trigger metadata values must be strings (quote numbers)")
    print(f"ok   {rel} ({len(docs)} document{'s' if len(docs) != 1 else ''})")

if problems:
    print("\n".join("FAIL " + p for p in problems))
    sys.exit(1)
print(f"{len(files)} YAML files parse")
PY

echo "== docker compose config"
compose=()
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
fi
if [ ${#compose[@]} -eq 0 ]; then
    echo "skipped: neither 'docker compose' nor 'docker-compose' is installed"
else
    "${compose[@]}" -f "$here/docker-compose.yml" config -q
    echo "ok   deploy/docker-compose.yml (${compose[*]})"
    "${compose[@]}" -f "$here/docker-compose.yml" -f "$here/docker-compose.cuda.yml" config -q
    echo "ok   deploy/docker-compose.yml + deploy/docker-compose.cuda.yml (${compose[*]})"
fi

echo "== kubectl kustomize"
if command -v kubectl >/dev/null 2>&1; then
    n=$(kubectl kustomize "$here/k8s" | "$py" -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(sys.stdin) if d))')
    echo "ok   deploy/k8s renders to $n objects"
else
    echo "skipped: kubectl is not installed"
fi
echo "all checks passed"
