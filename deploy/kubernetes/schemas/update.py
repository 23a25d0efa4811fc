#!/usr/bin/env python3
"""Refresh dask-operator-crds.json.gz: the Dask Kubernetes operator's CRD schemas.

    pip download --no-deps dask-kubernetes==2026.3.0 -d /tmp/wheels
    python deploy/kubernetes/schemas/update.py /tmp/wheels/dask_kubernetes-2026.3.0-py3-none-any.whl

(or with no argument, from an installed dask-kubernetes). The tests validate
deploy/kubernetes/*.yaml against these schemas with jsonschema, so CI needs
neither a cluster nor dask-kubernetes and its ~45 dependencies. Keep the
version in step with the operator version deploy/README.md installs.
The schemas are the operator's own (BSD-3-Clause, (c) Dask developers).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import yaml

CRDS = "dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator/crds/"
OUT = Path(__file__).with_name("dask-operator-crds.json.gz")


def _crd_texts(source: str | None) -> tuple[str, list[str]]:
    if source:
        with zipfile.ZipFile(source) as whl:
            names = sorted(n for n in whl.namelist() if n.startswith(CRDS) and n.endswith(".yaml"))
            version = Path(source).name.split("-")[1]
            return version, [whl.read(n).decode() for n in names]
    spec = importlib.util.find_spec("dask_kubernetes")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        sys.exit("update.py: give a dask-kubernetes wheel, or install dask-kubernetes")
    root = Path(next(iter(spec.submodule_search_locations))).parent
    files = sorted((root / CRDS).glob("*.yaml"))
    return importlib.metadata.version("dask-kubernetes"), [f.read_text() for f in files]


def schemas(texts: list[str]) -> dict[str, dict]:
    """``{"Kind/version": openAPIV3Schema}`` for every served version."""
    out = {}
    for text in texts:
        crd = yaml.safe_load(text)
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                group = crd["spec"]["group"]
                out[f"{group}/{version['name']}/{crd['spec']['names']['kind']}"] = version["schema"]["openAPIV3Schema"]
    return out


def main() -> int:
    version, texts = _crd_texts(sys.argv[1] if len(sys.argv) > 1 else None)
    doc = {"source": f"dask-kubernetes=={version}", "schemas": schemas(texts)}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    # mtime=0: the same input gives the same bytes, so a refresh only shows up when the schemas change.
    OUT.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"{OUT}: {doc['source']}, {', '.join(sorted(doc['schemas']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
