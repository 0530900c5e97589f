#!/usr/bin/env python3
"""deploy/kubernetes/ checked without a cluster or kubectl: every manifest parses (PyYAML) and
passes a schema written here for the fields it uses (known kinds and fields, types, DNS-1123
names, the DaemonSet's selector matching its pod labels, volume mounts naming declared
volumes, probes on a declared port); the ConfigMap's dduct.toml passes the real `dduct --check`
and agrees with the pod (listener ports = container ports = host ports, /healthz on
admin_bind's port, cert_dir and file_dir on writable volumes, the config mounted where --cfg
reads it, the image's user); the node drop-ins parse (TOML, JSON, systemd) and point at the
DaemonSet's port."""
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))
sys.path.insert(0, HERE)

import artifacts  # noqa: E402
from dductlib.harness import check, check_eq, run  # noqa: E402

try:
    import yaml
except ImportError:  # python3-yaml (.ci/packages-test.txt)
    print("1..0 # SKIP PyYAML missing: apt-get install python3-yaml")
    sys.exit(77)
try:
    import tomllib
except ImportError:
    tomllib = None

DIR = os.path.join(artifacts.SRC, "deploy", "kubernetes")
BIN = os.environ.get("DDUCT_BIN")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
IMAGE_USER = 65532  # deploy/oci/mkimage.py

# ---- a schema for the parts of the API these manifests use -------------------------------
# A spec is a type, a list [spec] (every item), a dict {field: spec} (only these fields; a
# '!' prefix marks a required one), or a function returning an error string or None.
S, I, B = str, int, bool


def name(v):
    return None if isinstance(v, str) and DNS1123.match(v) and len(v) <= 63 else \
        "not a DNS-1123 label: %r" % (v,)


def quantity(v):
    return None if re.match(r"^[0-9]+(m|Ki|Mi|Gi)?$", str(v)) else "not a quantity: %r" % (v,)


def port_ref(v):
    return None if isinstance(v, int) and 0 < v < 65536 or isinstance(v, str) and name(v) is \
        None else "not a port: %r" % (v,)


def port(v):
    return None if isinstance(v, int) and 0 < v < 65536 else "not a port number: %r" % (v,)


def one_of(*vals):
    return lambda v: None if v in vals else "%r not one of %r" % (v, vals)


LABELS = {"*": S}
META = {"!name": name, "namespace": name, "labels": LABELS, "annotations": LABELS}
PROBE = {"httpGet": {"!path": S, "!port": port_ref, "scheme": one_of("HTTP", "HTTPS")},
         "initialDelaySeconds": I, "periodSeconds": I, "timeoutSeconds": I,
         "failureThreshold": I, "successThreshold": I}
SECCTX = {"runAsUser": I, "runAsGroup": I, "runAsNonRoot": B, "allowPrivilegeEscalation": B,
          "readOnlyRootFilesystem": B, "privileged": B,
          "capabilities": {"drop": [S], "add": [S]},
          "seccompProfile": {"!type": one_of("RuntimeDefault", "Localhost", "Unconfined")}}
CONTAINER = {
    "!name": name, "!image": S, "command": [S], "args": [S], "env": [{"!name": S, "value": S}],
    "ports": [{"name": name, "!containerPort": port, "hostPort": port,
               "protocol": one_of("TCP", "UDP", "SCTP")}],
    "startupProbe": PROBE, "readinessProbe": PROBE, "livenessProbe": PROBE,
    "resources": {"requests": {"cpu": quantity, "memory": quantity},
                  "limits": {"cpu": quantity, "memory": quantity}},
    "securityContext": SECCTX,
    "volumeMounts": [{"!name": name, "!mountPath": S, "readOnly": B, "subPath": S}],
}
VOLUME = {"!name": name, "configMap": {"!name": name, "defaultMode": I},
          "secret": {"!secretName": name, "defaultMode": I}, "emptyDir": {"medium": S,
                                                                          "sizeLimit": quantity},
          "hostPath": {"!path": S, "type": one_of("Directory", "DirectoryOrCreate")}}
POD = {"hostNetwork": B, "dnsPolicy": one_of("ClusterFirst", "ClusterFirstWithHostNet",
                                              "Default"),
       "automountServiceAccountToken": B, "terminationGracePeriodSeconds": I,
       "priorityClassName": S, "serviceAccountName": name,
       "tolerations": [{"operator": one_of("Exists", "Equal"), "key": S, "effect": S}],
       "securityContext": {"fsGroup": I, "runAsUser": I, "runAsNonRoot": B,
                           "seccompProfile": SECCTX["seccompProfile"]},
       "initContainers": [CONTAINER], "!containers": [CONTAINER], "volumes": [VOLUME],
       "nodeSelector": LABELS}
KINDS = {
    ("v1", "Namespace"): {"!apiVersion": S, "!kind": S, "!metadata": META},
    ("v1", "ConfigMap"): {"!apiVersion": S, "!kind": S, "!metadata": META, "data": {"*": S}},
    ("apps/v1", "DaemonSet"): {
        "!apiVersion": S, "!kind": S, "!metadata": META,
        "!spec": {"!selector": {"!matchLabels": LABELS},
                  "updateStrategy": {"type": one_of("RollingUpdate", "OnDelete"),
                                     "rollingUpdate": {"maxUnavailable": I}},
                  "!template": {"!metadata": {"labels": LABELS, "annotations": LABELS},
                                "!spec": POD}}},
}


def validate(v, spec, path):
    if isinstance(spec, dict):
        check(isinstance(v, dict), "%s is a mapping" % path, v)
        fields = {k.lstrip("!"): s for k, s in spec.items()}
        for k in spec:
            if k.startswith("!"):
                check(k[1:] in v, "%s.%s is required" % (path, k[1:]))
        for k, item in v.items():
            check(k in fields or "*" in fields, "%s.%s is a known field" % (path, k))
            validate(item, fields.get(k, fields.get("*")), "%s.%s" % (path, k))
    elif isinstance(spec, list):
        check(isinstance(v, list), "%s is a list" % path, v)
        for i, item in enumerate(v):
            validate(item, spec[0], "%s[%d]" % (path, i))
    elif spec in (str, int, bool):
        check(type(v) is spec, "%s is a %s" % (path, spec.__name__), repr(v))
    else:
        err = spec(v)
        check(err is None, path, err)


def load():
    with open(os.path.join(DIR, "dduct.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    by_kind = {}
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        check(key in KINDS, "a known kind", key)
        validate(d, KINDS[key], "%s/%s" % (key[1], d["metadata"].get("name")))
        by_kind[key[1]] = d
    return by_kind


def test_schema(rig):
    """Every document is a known kind whose fields pass the schema; the DaemonSet's selector
    matches its template's labels; names and namespaces agree; every volume mount names a
    declared volume, every probe a declared port."""
    k = load()
    check_eq(sorted(k), ["ConfigMap", "DaemonSet", "Namespace"], "the kinds")
    ns = k["Namespace"]["metadata"]["name"]
    for kind in ("ConfigMap", "DaemonSet"):
        check_eq(k[kind]["metadata"].get("namespace"), ns, kind + " namespace")
    ds = k["DaemonSet"]["spec"]
    labels = ds["template"]["metadata"]["labels"]
    for key, val in ds["selector"]["matchLabels"].items():
        check_eq(labels.get(key), val, "selector %s matches the pod" % key)
    pod = ds["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    check_eq(len(vols), len(pod["volumes"]), "volume names unique")
    for c in pod.get("initContainers", []) + pod["containers"]:
        for m in c.get("volumeMounts", []):
            check(m["name"] in vols, "%s mounts a declared volume" % c["name"], m["name"])
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                p = c[probe]["httpGet"]["port"]
                check(p in ports or p in ports.values(), "%s port declared" % probe, p)
    cm = k["ConfigMap"]["metadata"]["name"]
    check(any(v.get("configMap", {}).get("name") == cm for v in vols.values()),
          "the ConfigMap is mounted")


def toml_value(text, key):
    m = re.search(r"^%s\s*=\s*'([^']*)'" % key, text, re.M)
    return m.group(1) if m else None


def test_config_and_pod_agree(rig):
    """The ConfigMap's dduct.toml passes dduct --check; tcp_bind, tls_bind and admin_bind
    ports are the container's ports (host ports too, on the host network); the probes ask
    /healthz on admin_bind's port; --cfg reads the mounted ConfigMap; cert_dir and file_dir
    are writable volumes (file_dir on the hostPath); the CA Secret reaches cert_dir through
    the init step; the container runs as the image's non-root user."""
    k = load()
    text = k["ConfigMap"]["data"]["dduct.toml"]
    check(BIN is not None, "DDUCT_BIN set")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    p = subprocess.run([BIN, "--check", "--cfg", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    check_eq(p.returncode, 0, "dduct --check on the ConfigMap (%s)" % p.stderr)
    eff = p.stdout
    pod = k["DaemonSet"]["spec"]["template"]["spec"]
    c = [c for c in pod["containers"] if c["name"] == "dduct"][0]
    ports = {p["name"]: p for p in c["ports"]}
    want = {"http-proxy": toml_value(eff, "tcp_bind"), "tls-proxy": toml_value(eff, "tls_bind"),
            "admin": toml_value(eff, "admin_bind")}
    for pname, bind in want.items():
        check(bind is not None and bind.startswith("0.0.0.0:"), "%s listens on all addresses"
              % pname, bind)
        port = int(bind.rsplit(":", 1)[1])
        check_eq(ports[pname]["containerPort"], port, pname + " containerPort")
        if pod.get("hostNetwork"):
            check_eq(ports[pname].get("hostPort", port), port, pname + " hostPort")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = c[probe]["httpGet"]
        check_eq((g["path"], ports.get(g["port"], {}).get("containerPort", g["port"])),
                 ("/healthz", int(want["admin"].rsplit(":", 1)[1])), probe)
    mounts = {m["mountPath"].rstrip("/"): m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    cfg = c["args"][c["args"].index("--cfg") + 1]
    m = mounts.get(os.path.dirname(cfg))
    check(m is not None and "configMap" in vols[m["name"]], "--cfg is in the ConfigMap mount")
    check(os.path.basename(cfg) in k["ConfigMap"]["data"], "the ConfigMap has " + cfg)

    def volume_of(path):
        best = max((mp for mp in mounts if path.startswith(mp + "/")), key=len, default=None)
        check(best is not None, "%s is on a volume" % path)
        return mounts[best], vols[mounts[best]["name"]]

    cert_m, cert_v = volume_of(toml_value(eff, "cert_dir"))
    file_m, file_v = volume_of(toml_value(eff, "file_dir"))
    for m, v in ((cert_m, cert_v), (file_m, file_v)):
        check(not m.get("readOnly") and ("emptyDir" in v or "hostPath" in v),
              "%s is writable" % m["mountPath"])
    check("hostPath" in file_v, "file_dir is on the node (hostPath)")
    secret = [v for v in vols.values() if "secret" in v]
    check_eq(len(secret), 1, "one Secret volume (the CA)")
    init = pod["initContainers"][0]
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    script = " ".join(init["command"])
    check(secret[0]["name"] in init_mounts and cert_m["name"] in init_mounts,
          "the init step sees the Secret and cert_dir")
    for f in ("ca.crt", "ca.key"):
        check("%s/%s" % (init_mounts[secret[0]["name"]], f) in script, "init copies " + f, script)
    check("chown -R %d:%d" % (IMAGE_USER, IMAGE_USER) in script, "init hands dirs to the user")
    sc = c["securityContext"]
    check_eq((sc["runAsUser"], sc["runAsNonRoot"], sc["allowPrivilegeEscalation"],
              sc["capabilities"]["drop"]), (IMAGE_USER, True, False, ["ALL"]),
             "dduct runs as the image's user, no privileges")
    with open(os.path.join(artifacts.SRC, "deploy", "oci", "mkimage.py")) as f:
        check("UID = GID = %d" % IMAGE_USER in f.read(), "the image's user is %d" % IMAGE_USER)


def test_node_dropins(rig):
    """containerd's hosts.toml parses (TOML) with a server, a host entry and dduct's CA; the
    containerd.service drop-in sets HTTPS_PROXY to the DaemonSet's proxy port; docker's
    daemon.json parses and names the same proxy."""
    k = load()
    c = k["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    port = [p for p in c["ports"] if p["name"] == "http-proxy"][0]["hostPort"]
    proxy = "http://127.0.0.1:%d" % port
    hosts = os.path.join(DIR, "node", "containerd", "certs.d", "docker.io", "hosts.toml")
    if tomllib is not None:
        with open(hosts, "rb") as f:
            h = tomllib.load(f)
        check(h["server"].startswith("https://"), "hosts.toml server", h)
        check_eq(list(h["host"]), [h["server"]], "one host entry for the server")
        entry = h["host"][h["server"]]
        check_eq((entry["ca"], sorted(entry["capabilities"])),
                 ("/etc/dduct/ca.crt", ["pull", "resolve"]), "host entry")
    with open(os.path.join(DIR, "node", "containerd", "dduct-proxy.conf")) as f:
        text = f.read()
    envs = re.findall(r'^Environment="([A-Z_]+)=([^"]*)"$', text, re.M)
    check_eq(dict(envs).get("HTTPS_PROXY"), proxy, "containerd HTTPS_PROXY")
    check(dict(envs).get("NO_PROXY"), "containerd NO_PROXY set")
    sections = []
    for ln in text.splitlines():  # systemd unit syntax: [Section], Key=value, comments
        if not ln.strip() or ln.startswith(("#", ";")):
            continue
        if re.match(r"^\[[A-Za-z]+\]$", ln):
            sections.append(ln[1:-1])
        else:
            check(re.match(r"^[A-Za-z]+=", ln) is not None and sections, "unit line", ln)
    check_eq(sections, ["Service"], "drop-in sections")
    with open(os.path.join(DIR, "node", "docker", "daemon.json")) as f:
        d = json.load(f)
    check_eq((d["proxies"]["https-proxy"], d["proxies"]["http-proxy"]), (proxy, proxy),
             "docker daemon.json proxies")


def test_schema_rejects(rig):
    """The schema check can fail: an unknown field, a wrong type, a bad name and a missing
    required field are each reported."""
    ds = load()["DaemonSet"]
    import copy
    for mutate, what in (
            (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy2="x"),
             "unknown field"),
            (lambda d: d["spec"]["template"]["spec"].update(hostNetwork="yes"), "wrong type"),
            (lambda d: d["metadata"].update(name="Dduct_DS"), "bad name"),
            (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("image"),
             "missing required field")):
        bad = copy.deepcopy(ds)
        mutate(bad)
        try:
            validate(bad, KINDS[("apps/v1", "DaemonSet")], "DaemonSet")
        except AssertionError:
            continue
        check(False, "the schema rejects a " + what)


if __name__ == "__main__":
    run([test_schema, test_config_and_pod_agree, test_node_dropins, test_schema_rejects])
