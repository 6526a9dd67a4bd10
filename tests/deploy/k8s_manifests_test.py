#!/usr/bin/python3
"""deploy/k8s/ validated offline, and the pieces that must agree, checked to agree.

Schema: every manifest (and the Secret that make-secret.sh writes) is checked against the
Kubernetes API's own generated models (Debian's python3-kubernetes, API 1.22): no field the API
does not have, every value of the API's type, every required field present (the models'
client-side validation). kubectl's client-side dry run needs an API server for its schema, so it
cannot run here.

Consistency: the Service selects the coordinator's pods and targets its listening port; the workers
connect to that Service name and port; the Job is Indexed with completions = parallelism = the N of
--client auto/N = the coordinator's --min-workers; every mounted ConfigMap and Secret exists and
holds the keys used; pods run as non-root.

End to end: the Secret's certificates work: a coordinator with them accepts a worker that checks the
certificate under the Service's name (--tls-server-name fedra-coordinator) over loopback.

usage: k8s_manifests_test.py FEDRA_BINARY SOURCE_DIR WORK_DIR"""
import base64
import glob
import os
import re
import shutil
import subprocess
import sys

import yaml
from kubernetes import client as k8s

from deploylib import Checks, wait_for_port

FEDRA = os.path.abspath(sys.argv[1])
SOURCE = os.path.abspath(sys.argv[2])
WORK = os.path.abspath(sys.argv[3])
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}
check = Checks()


def schema_errors(value, type_name, path):
    """Differences between `value` (parsed YAML) and the API type `type_name` (python client's naming)."""
    if value is None:
        return []
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [e for i, v in enumerate(value) for e in schema_errors(v, m.group(1), f"{path}[{i}]")]
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {type(value).__name__}"]
        return [e for key, v in value.items() for e in schema_errors(v, m.group(1), f"{path}.{key}")]
    if type_name == "object":  # IntOrString, Quantity and free-form fields
        return []
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    if type_name in ("datetime", "date"):
        return []
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} object, got {value!r}"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, v in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: {type_name} has no field '{key}'")
        else:
            errors += schema_errors(v, model.openapi_types[by_json[key]], f"{path}.{key}")
    return errors


def validate(doc, where):
    type_name = doc["apiVersion"].split("/")[-1].capitalize() + doc["kind"]
    if not hasattr(k8s, type_name):
        return [f"{where}: unknown kind {doc['apiVersion']} {doc['kind']}"]
    errors = schema_errors(doc, type_name, f"{where}:{doc['kind']}/{doc['metadata']['name']}")
    try:  # required fields and enumerations: the models' own validation
        k8s.ApiClient()._ApiClient__deserialize(doc, type_name)
    except ValueError as e:
        errors.append(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {e}")
    return errors


def arg_value(args, name):
    """--name=value or --name value in a container's args (or a shell script's words)."""
    words = " ".join(args).replace("\\\n", " ").split()
    for i, w in enumerate(words):
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
        if w == name and i + 1 < len(words):
            return words[i + 1]
    return None


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    secret_file = os.path.join(WORK, "secret.yaml")
    r = subprocess.run(["bash", os.path.join(SOURCE, "deploy/k8s/make-secret.sh"), "--workers", "4", "--fedra", FEDRA,
                        "--out", secret_file], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    check(r.returncode == 0, f"make-secret.sh --workers 4: {r.stdout.strip()}")

    docs = []
    for path in sorted(glob.glob(os.path.join(SOURCE, "deploy/k8s/*.yaml"))) + [secret_file]:
        for doc in yaml.safe_load_all(open(path)):
            if doc:
                docs.append((os.path.basename(path), doc))
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)
    print("     manifests: " + ", ".join(kinds))
    for where, doc in docs:
        errors = validate(doc, where)
        check(not errors, f"{where}: {doc['kind']}/{doc['metadata']['name']} matches the API schema"
              + ("" if not errors else ": " + "; ".join(errors)))

    # The schema check itself rejects what it should (a check that cannot fail proves nothing).
    def mutated(change):
        doc = yaml.safe_load(open(os.path.join(SOURCE, "deploy/k8s/workers.yaml")))
        change(doc["spec"], doc["spec"]["template"]["spec"]["containers"][0])
        return validate(doc, "mutated workers.yaml")

    caught = [any("has no field 'argz'" in e for e in mutated(lambda s, c: c.update(argz=["worker"]))),
              any("expected int" in e for e in mutated(lambda s, c: s.update(completions="four"))),
              any("`name`, must not be `None`" in e for e in mutated(lambda s, c: c.pop("name")))]
    check(all(caught), f"the schema check catches an unknown field, a wrong type and a missing required field {caught}")

    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deploy = by_kind["Deployment"]["fedra-coordinator"]
    service = by_kind["Service"]["fedra-coordinator"]
    job = by_kind["Job"]["fedra-workers"]
    pod_c, pod_w = deploy["spec"]["template"], job["spec"]["template"]
    coord_script = pod_c["spec"]["containers"][0]["args"]
    worker_args = pod_w["spec"]["containers"][0]["args"]

    labels = pod_c["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in service["spec"]["selector"].items()),
          "the Service selects the coordinator's pods")
    check(all(labels.get(k) == v for k, v in deploy["spec"]["selector"]["matchLabels"].items()),
          "the Deployment's selector matches its pod template")
    listen_port = int(arg_value(coord_script, "--listen").rsplit(":", 1)[1])
    container_ports = [p["containerPort"] for p in pod_c["spec"]["containers"][0]["ports"]]
    svc_port = service["spec"]["ports"][0]
    check(svc_port["targetPort"] == listen_port and listen_port in container_ports,
          f"Service targetPort {svc_port['targetPort']} = containerPort = the coordinator's --listen port {listen_port}")
    connect = arg_value(worker_args, "--connect")
    check(connect == f"{service['metadata']['name']}:{svc_port['port']}",
          f"workers --connect {connect}: the Service's name and port")

    n = int(re.fullmatch(r"auto/(\d+)", arg_value(worker_args, "--client")).group(1))
    spec = job["spec"]
    check(spec.get("completionMode") == "Indexed", "the workers are an Indexed Job (JOB_COMPLETION_INDEX per pod)")
    check(spec["completions"] == spec["parallelism"] == n == int(arg_value(coord_script, "--min-workers")),
          f"completions {spec['completions']} = parallelism {spec['parallelism']} = --client auto/{n} = "
          f"--min-workers {arg_value(coord_script, '--min-workers')}")
    env = {e["name"]: e for e in pod_w["spec"]["containers"][0].get("env", [])}
    check("job-completion-index" in str(env.get("JOB_COMPLETION_INDEX", {})),
          "JOB_COMPLETION_INDEX comes from the pod's completion-index annotation")

    secret = by_kind["Secret"]["fedra-tls"]
    keys = set(secret["data"])
    needed = {"ca.pem", "coordinator.pem", "coordinator.key"} | {f"worker-{i}.{e}" for i in range(n) for e in ("pem", "key")}
    check(needed <= keys, f"the Secret holds the CA, the coordinator's and worker-0..{n - 1}'s certificates and keys")
    for pod, who in ((pod_c, "coordinator"), (pod_w, "workers")):
        for v in pod["spec"]["volumes"]:
            if "secret" in v:
                check(v["secret"]["secretName"] in by_kind["Secret"], f"{who}: Secret {v['secret']['secretName']} exists")
                for item in v["secret"].get("items", []):
                    check(item["key"] in keys, f"{who}: Secret key {item['key']} exists")
            if "configMap" in v:
                cm = by_kind["ConfigMap"].get(v["configMap"]["name"])
                check(cm is not None and "job.cfg" in cm["data"], f"{who}: ConfigMap {v['configMap']['name']} has job.cfg")
        sc = pod["spec"].get("securityContext", {})
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, f"{who}: pods run as a non-root user")
    for who, cfg_args in (("coordinator", coord_script), ("workers", worker_args)):
        check(arg_value(cfg_args, "--config") == "/etc/fedra/job.cfg", f"{who} read the ConfigMap's job.cfg")

    # The Secret's material, used as the pods use it: a worker checks the coordinator's certificate
    # under the Service's name and presents worker-{client}.
    certs = os.path.join(WORK, "certs")
    os.makedirs(certs)
    for key, value in secret["data"].items():
        with open(os.path.join(certs, key), "wb") as f:
            f.write(base64.b64decode(value))
    port_file = os.path.join(WORK, "port")
    with open(os.path.join(WORK, "tls.log"), "w") as log:
        coordinator = subprocess.Popen(
            [FEDRA, "coordinator", "--listen", "127.0.0.1:0", "--port-file", port_file, "--min-workers", "1",
             "--strategy", "fedavg", "--model", "mlp:784-16-10", "--test-data", "fmnist:limit=500", "--fedavg.rounds", "1",
             "--tls-cert", f"{certs}/coordinator.pem", "--tls-key", f"{certs}/coordinator.key", "--tls-ca",
             f"{certs}/ca.pem"], stdout=log, stderr=subprocess.STDOUT)
        port = wait_for_port(port_file, coordinator)
        env = dict(os.environ, JOB_COMPLETION_INDEX="3")
        worker = subprocess.run(
            [FEDRA, "worker", "--client", f"auto/{n}", "--connect", f"127.0.0.1:{port}", "--tls-server-name",
             "fedra-coordinator", "--tls-ca", f"{certs}/ca.pem", "--tls-cert", f"{certs}/worker-{{client}}.pem",
             "--tls-key", f"{certs}/worker-{{client}}.key", "--dataset", "fmnist:limit=500"], env=env, stdout=log,
            stderr=subprocess.STDOUT, timeout=120)
        code = coordinator.wait(timeout=60)
    text = open(os.path.join(WORK, "tls.log")).read()
    check(worker.returncode == 0 and code == 0 and "CN = worker-3'" in text,
          f"the Secret's certificates: worker-3 (index 3) joins a coordinator named fedra-coordinator over mutual "
          f"TLS (worker {worker.returncode}, coordinator {code})")

    return check.result(WORK)


if __name__ == "__main__":
    sys.exit(main())
