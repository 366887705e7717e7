#!/usr/bin/env python3
"""Checks what can be checked of deploy/ on a machine without a cluster or a Docker daemon.

- the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, which
  carries them offline), strictly: an unknown field is an error;
- the compose file against the Compose specification (check-jsonschema's vendored
  schema);
- `tollgate check` on the configuration the Kubernetes manifests mount: the ConfigMaps'
  gateway.toml and policies, the Secrets' example values as the files and environment
  they become in the pod;
- the systemd unit with `systemd-analyze verify` (the binary path pointed at the built
  one) and its `systemd-analyze security` exposure, which must stay at or under 2.0.

Usage: deploy_checks.py PATH/TO/tollgate   (run from the repository root; the
validators come from PyPI: see .ci/run)
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MAX_EXPOSURE = 2.0


def run(*args, env=None):
    print("$", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], env=env, check=True)


def kubernetes(tollgate):
    manifests = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    run("kubernetes-validate", "--strict", "--quiet", *manifests)
    for manifest in manifests:
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
        config = next(d for d in docs if d["kind"] == "ConfigMap" and "gateway.toml" in d["data"])
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            env = dict(os.environ)
            # The Deployment mounts each ConfigMap and Secret as a directory; the Redis
            # Secret becomes an environment variable.
            deployment = next(d for d in docs if d["kind"] == "Deployment")
            pod = deployment["spec"]["template"]["spec"]
            container = pod["containers"][0]
            volumes = {v["name"]: v for v in pod["volumes"]}
            by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
            for mount in container["volumeMounts"]:
                volume = volumes[mount["name"]]
                if "configMap" in volume:
                    files = by_name[("ConfigMap", volume["configMap"]["name"])]["data"]
                else:
                    files = by_name[("Secret", volume["secret"]["secretName"])]["stringData"]
                target = tmp / pathlib.Path(mount["mountPath"]).relative_to("/etc/tollgate")
                target.mkdir(parents=True, exist_ok=True)
                for name, text in files.items():
                    (target / name).write_text(text)
            for var in container.get("env", []):
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = by_name[("Secret", ref["name"])]["stringData"][ref["key"]]
            assert (tmp / "gateway.toml").exists(), f"{manifest}: nothing mounts gateway.toml"
            assert config["data"]["gateway.toml"] == (tmp / "gateway.toml").read_text()
            run(tollgate, "check", "--config", tmp / "gateway.toml", env=env)


def compose():
    run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", DEPLOY / "docker-compose.yml")


def systemd(tollgate):
    if shutil.which("systemd-analyze") is None:
        print("systemd-analyze not found: the unit is not verified")
        return
    with tempfile.TemporaryDirectory() as tmp:
        unit = pathlib.Path(tmp) / "tollgate.service"
        text = (DEPLOY / "systemd" / "tollgate.service").read_text()
        unit.write_text(text.replace("/usr/local/bin/tollgate", str(tollgate)))
        run("systemd-analyze", "verify", unit)
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(unit)],
            capture_output=True, text=True, check=False,
        ).stdout
        line = next(l for l in out.splitlines() if "Overall exposure level" in l)
        print(line)
        exposure = float(line.split(":")[1].split()[0])
        assert exposure <= MAX_EXPOSURE, f"exposure {exposure} over {MAX_EXPOSURE}"


def main():
    tollgate = pathlib.Path(sys.argv[1]).resolve()
    os.chdir(ROOT)
    kubernetes(tollgate)
    compose()
    systemd(tollgate)
    print("deploy checks: ok")


if __name__ == "__main__":
    main()
