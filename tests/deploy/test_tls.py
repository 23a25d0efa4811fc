"""A TLS-only cluster from deploy/tls + deploy/local: plain connections refused, dnmf accepted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import dnmf
from dnmf.cli.cluster import ClusterOptions, ConnectError, connect, security
from tests.deploy.helpers import MAKE_CERTS, dask_local, dnmf_executable, start_cluster, transitions
from tests.helpers import planted

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="deploy/tls/make-certs needs the openssl command"
)


def make_certs(folder) -> None:
    subprocess.run(["bash", str(MAKE_CERTS), str(folder)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    make_certs(folder)
    return folder


@pytest.fixture(scope="module")
def tls_cluster(certs, tmp_path_factory):
    state = tmp_path_factory.mktemp("dask-local-tls")
    address = start_cluster(state, 1, "--tls", str(certs))
    yield address
    dask_local(state, "stop")


def _client_files(certs) -> dict:
    return dict(
        tls_ca_file=str(certs / "ca.pem"), tls_cert=str(certs / "client.pem"), tls_key=str(certs / "client-key.pem")
    )


@pytest.mark.subprocess
def test_make_certs_writes_a_ca_and_role_certificates(certs):
    for role in ("scheduler", "worker", "client"):
        subprocess.run(
            ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), str(certs / f"{role}.pem")],
            check=True,
            capture_output=True,
        )
        assert (certs / f"{role}-key.pem").stat().st_mode & 0o077 == 0  # keys readable by the owner only
    text = (certs / "dask-client.yaml").read_text()
    assert "require-encryption: true" in text and str(certs / "client-key.pem") in text


@pytest.mark.cluster
@pytest.mark.subprocess
def test_plain_tcp_is_refused(tls_cluster):
    assert tls_cluster.startswith("tls://127.0.0.1:")
    plain = tls_cluster.replace("tls://", "tcp://")
    with pytest.raises(ConnectError, match=f"Could not connect to the Dask scheduler at {plain}"):
        with connect(ClusterOptions(scheduler=plain, timeout=3)):
            pass


@pytest.mark.cluster
@pytest.mark.subprocess
def test_certificates_from_another_ca_are_refused(tls_cluster, tmp_path):
    make_certs(tmp_path)
    with pytest.raises(ConnectError, match="Could not connect"):
        with connect(ClusterOptions(scheduler=tls_cluster, timeout=3, **_client_files(tmp_path))):
            pass


@pytest.mark.cluster
@pytest.mark.subprocess
def test_connect_with_certificate_files_runs_dnmf(tls_cluster, certs, tmp_path):
    X = planted(m=120, n=60)
    params = dict(n_components=3, solver="mu", init="random", random_state=1, max_iter=5, tol=0.0)
    sec = security(ClusterOptions(**_client_files(certs)))
    before = transitions(tls_cluster, sec)
    with connect(ClusterOptions(scheduler=tls_cluster, **_client_files(certs))) as (client, _):
        assert client.scheduler.address == tls_cluster
        remote = dnmf.NMF(client=client, chunks=60, **params).fit(X)
    assert transitions(tls_cluster, sec) > before
    local = dnmf.NMF(chunks=60, **params).fit(X)
    np.testing.assert_array_equal(remote.components_, local.components_)


@pytest.mark.cluster
@pytest.mark.subprocess
def test_connect_with_a_tls_config_file(tls_cluster, certs, tmp_path):
    # Relative paths in the file are relative to the file.
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        shutil.copy(certs / name, tmp_path / name)
    (tmp_path / "tls.yaml").write_text(
        "distributed:\n  comm:\n    tls:\n      ca-file: ca.pem\n"
        "      client: {cert: client.pem, key: client-key.pem}\n"
    )
    address = tls_cluster.removeprefix("tls://")  # no scheme + TLS settings: tls://
    with connect(ClusterOptions(scheduler=address, tls_config=str(tmp_path / "tls.yaml"))) as (client, _):
        assert client.submit(sum, [2, 3]).result() == 5


@pytest.mark.subprocess
def test_bad_tls_settings_are_usage_errors(certs, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        security(ClusterOptions(tls_ca_file=str(tmp_path / "nope.pem"), tls_cert=str(certs / "client.pem")))
    with pytest.raises(ValueError, match="no CA file"):
        security(ClusterOptions(tls_cert=str(certs / "client.pem"), tls_key=str(certs / "client-key.pem")))
    (tmp_path / "empty.yaml").write_text("distributed: {}\n")
    with pytest.raises(ValueError, match="no 'distributed: comm: tls:' section"):
        security(ClusterOptions(tls_config=str(tmp_path / "empty.yaml")))
    with pytest.raises(ValueError, match="no scheduler"):
        with connect(ClusterOptions(**_client_files(certs))):
            pass
    assert security(ClusterOptions()) is None
    sec = security(ClusterOptions(tls_config=str(certs / "dask-client.yaml")))
    assert sec.require_encryption and sec.tls_client_cert == str(certs / "client.pem")


@pytest.fixture(scope="module")
def tls_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("tls-store") / "X.zarr"
    dnmf.write_matrix(planted(m=120, n=60), path, chunks=(60, 60))
    return str(path)


@pytest.mark.cluster
@pytest.mark.subprocess
def test_cli_fit_over_tls(tls_cluster, certs, tls_store, tmp_path):
    exe = dnmf_executable()
    if exe is None:
        pytest.skip("the dnmf command line is not installed in this environment (pip install -e .)")
    # (--tls CONFIG maps to the same ClusterOptions.tls_config that test_connect_with_a_tls_config_file runs.)
    tls_args = [
        "--tls-ca-file",
        str(certs / "ca.pem"),
        "--tls-cert",
        str(certs / "client.pem"),
        "--tls-key",
        str(certs / "client-key.pem"),
    ]
    cmd = [
        exe,
        "fit",
        tls_store,
        "-k",
        "3",
        "-o",
        str(tmp_path / "m.zarr"),
        "--max-iter",
        "4",
        "--tol",
        "0",
        "--seed",
        "0",
        "--quiet",
        "--scheduler",
        tls_cluster,
        *tls_args,
    ]
    sec = security(ClusterOptions(**_client_files(certs)))
    before = transitions(tls_cluster, sec)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert transitions(tls_cluster, sec) > before
    model = dnmf.load(tmp_path / "m.zarr")
    assert model.components_.shape == (3, 60) and model.n_iter_ == 4


@pytest.mark.cluster
@pytest.mark.subprocess
def test_tls_only_worker_refuses_plain_scheduler_address(tls_cluster, certs):
    """A worker without certificates cannot join the TLS-only scheduler."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dask",
            "worker",
            tls_cluster.replace("tls://", "tcp://"),
            "--no-nanny",
            "--death-timeout",
            "1",
            "--host",
            "127.0.0.1",
            "--dashboard-address",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Registered to" not in proc.stderr


@settings(max_examples=25, deadline=None)
@given(
    names=st.lists(
        st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(lambda n: n not in {".", ".."}),
        min_size=3,
        max_size=3,
        unique=True,
    ),
    absolute=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_tls_config_paths_resolve_against_the_file(names, absolute):
    """Relative paths in a --tls file are relative to that file; absolute ones are kept."""
    with tempfile.TemporaryDirectory() as d:
        folder, elsewhere = Path(d) / "conf", Path(d) / "abs"
        folder.mkdir()
        elsewhere.mkdir()
        paths = []
        for name, is_abs in zip(names, absolute, strict=True):
            target = (elsewhere if is_abs else folder) / name
            target.write_text("x")
            paths.append(str(target) if is_abs else name)
        (folder / "tls.yaml").write_text(
            yaml.safe_dump(
                {"distributed": {"comm": {"tls": {"ca-file": paths[0], "client": {"cert": paths[1], "key": paths[2]}}}}}
            )
        )
        sec = security(ClusterOptions(tls_config=str(folder / "tls.yaml")))
        expected = [str((elsewhere if a else folder) / n) for n, a in zip(names, absolute, strict=True)]
        assert [sec.tls_ca_file, sec.tls_client_cert, sec.tls_client_key] == expected
