"""Where the dnmf command line runs a fit: an embedded local cluster, or an existing Dask scheduler.

:func:`connect` turns :class:`ClusterOptions` (what the ``dnmf`` command
line's ``--scheduler``, ``--scheduler-file``, ``--workers`` and ``--tls-*``
options hold) into a connected :class:`distributed.Client`:

- no scheduler given: an embedded :class:`distributed.LocalCluster` on this
  machine, closed again on exit;
- a scheduler address (``tcp://host:8786``, ``tls://host:8786``) or a
  scheduler file: a client of that scheduler, with TLS certificates from
  :func:`security` when given.

A scheduler that cannot be reached raises :class:`ConnectError` with the
address, the time waited and the reason, never a raw Dask traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dnmf.storage.placement import scheduler_identity

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client, Security

__all__ = ["ClusterOptions", "ConnectError", "connect", "security"]

#: The Dask configuration keys a ``tls_config`` file may set, and the
#: :class:`distributed.Security` fields they fill.
_TLS_KEYS = {
    "ca-file": "tls_ca_file",
    "client.cert": "tls_client_cert",
    "client.key": "tls_client_key",
    "scheduler.cert": "tls_scheduler_cert",
    "scheduler.key": "tls_scheduler_key",
    "worker.cert": "tls_worker_cert",
    "worker.key": "tls_worker_key",
    "ciphers": "tls_ciphers",
    "min-version": "tls_min_version",
    "max-version": "tls_max_version",
}
_FILE_FIELDS = {
    "tls_ca_file",
    "tls_client_cert",
    "tls_client_key",
    "tls_scheduler_cert",
    "tls_scheduler_key",
    "tls_worker_cert",
    "tls_worker_key",
}


class ConnectError(ConnectionError):
    """The Dask scheduler could not be reached (or refused the connection)."""


@dataclass
class ClusterOptions:
    """Where to run: an existing scheduler, or the shape of an embedded cluster.

    Parameters
    ----------
    scheduler : str or None, default=None
        Address of a running Dask scheduler, ``tcp://host:port`` or
        ``tls://host:port``; an address without a scheme gets ``tls://``
        when TLS settings are given, else ``tcp://``.
    scheduler_file : str or None, default=None
        Path of the JSON file a scheduler wrote with ``--scheduler-file``;
        waited for up to ``timeout`` seconds. Exclusive with ``scheduler``.
    n_workers : int or None, default=None
        Embedded cluster only: worker processes (threads with
        ``processes=False``). None: Dask's choice for this machine's cores.
    threads_per_worker : int or None, default=None
        Embedded cluster only. None: the cores divided among the workers.
    memory_limit : str or None, default=None
        Embedded cluster only: per-worker memory limit (``"4GiB"``, ``"auto"``,
        ``"0"`` for none). None: the machine's memory divided among the workers.
    processes : bool, default=True
        Embedded cluster only: worker processes (True) or threads of this
        process (False).
    tls_ca_file, tls_cert, tls_key : str or None, default=None
        PEM files: the cluster's CA certificate, and this client's certificate
        and private key (the key may be appended to the certificate instead).
    tls_config : str or None, default=None
        A Dask configuration YAML file with ``distributed.comm.tls.*`` settings
        (``ca-file``, ``client.cert``, ``client.key``...); relative paths in it
        are relative to the file. ``tls_*`` options given as well override it.
    dashboard_address : str or None, default=":0"
        Embedded cluster only: where its dashboard listens (``":0"``: a free
        port on ``host``; None: no dashboard).
    host : str, default="127.0.0.1"
        Embedded cluster only: the interface its scheduler, workers and
        dashboard listen on. Only this machine can reach them unless another
        host (``"0.0.0.0"``: every interface) is given.
    timeout : float, default=10.0
        Seconds to wait for the scheduler (or the scheduler file).
    """

    scheduler: str | None = None
    scheduler_file: str | None = None
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    processes: bool = True
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_config: str | None = None
    dashboard_address: str | None = ":0"
    timeout: float = 10.0
    host: str = "127.0.0.1"

    @property
    def uses_tls(self) -> bool:
        """Whether any TLS setting is given."""
        return any(v is not None for v in (self.tls_ca_file, self.tls_cert, self.tls_key, self.tls_config))


def _tls_config_fields(path: str) -> dict[str, Any]:
    """The Security fields a Dask configuration YAML file sets."""
    import yaml

    if not os.path.isfile(path):
        raise ValueError(
            f"The TLS configuration file {path!r} does not exist. Pass a Dask configuration YAML "
            "file holding distributed.comm.tls settings (see deploy/tls/)."
        )
    with open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"The TLS configuration file {path!r} is not valid YAML ({exc}). Fix the file.") from None
    tls = cfg.get("distributed", {}).get("comm", {}).get("tls") if isinstance(cfg, dict) else None
    if not isinstance(tls, dict):
        raise ValueError(
            f"The TLS configuration file {path!r} has no 'distributed: comm: tls:' section. Write the "
            "settings as distributed.comm.tls.ca-file, .client.cert and .client.key (see deploy/tls/)."
        )
    fields: dict[str, Any] = {}
    base = os.path.dirname(os.path.abspath(path))
    for key, field in _TLS_KEYS.items():
        value: Any = tls
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        if field in _FILE_FIELDS:
            value = os.path.join(base, os.path.expanduser(str(value)))
        elif field in ("tls_min_version", "tls_max_version"):
            # The config file says 1.2 / 1.3; Security's keyword arguments take ssl.TLSVersion.
            import ssl

            versions = {1.2: ssl.TLSVersion.TLSv1_2, 1.3: ssl.TLSVersion.TLSv1_3}
            if value not in versions:
                raise ValueError(f"{key} in {path!r} is {value!r}; Dask supports 1.2 or 1.3. Fix the file.")
            value = versions[value]
        fields[field] = value
    return fields


def security(opts: ClusterOptions) -> Security | None:
    """The client's TLS settings from ``opts``, or None if no ``tls_*`` option is given.

    Parameters
    ----------
    opts : ClusterOptions
        ``tls_ca_file``, ``tls_cert``, ``tls_key`` and ``tls_config`` are read.

    Returns
    -------
    distributed.Security or None
        A Security requiring encryption, with the CA and the client
        certificate and key; None when no TLS option is set.

    Raises
    ------
    ValueError
        A file does not exist, or the CA, certificate or key is missing.
    """
    if not opts.uses_tls:
        return None
    fields: dict[str, Any] = {}
    if opts.tls_config is not None:
        fields.update(_tls_config_fields(os.fspath(opts.tls_config)))
    for field, value in (
        ("tls_ca_file", opts.tls_ca_file),
        ("tls_client_cert", opts.tls_cert),
        ("tls_client_key", opts.tls_key),
    ):
        if value is not None:
            fields[field] = os.path.abspath(os.path.expanduser(os.fspath(value)))
    missing = [
        name
        for name, field in (("CA file", "tls_ca_file"), ("client certificate", "tls_client_cert"))
        if not fields.get(field)
    ]
    if missing:
        raise ValueError(
            f"Incomplete TLS settings: no {' and no '.join(missing)}. Give the CA certificate, this "
            "client's certificate and its key (--tls-ca-file, --tls-cert, --tls-key), or a Dask "
            "configuration file with all three (--tls)."
        )
    for field in sorted(_FILE_FIELDS & fields.keys()):
        if not os.path.isfile(fields[field]):
            raise ValueError(
                f"The TLS file {fields[field]!r} ({field}) does not exist. Check the path; "
                "deploy/tls/make-certs creates a CA and certificates."
            )
    from distributed import Security

    return Security(require_encryption=True, **fields)


def _wait_for_scheduler_file(path: str, timeout: float) -> str:
    """The address in a scheduler file, waiting for the scheduler to write it."""
    deadline = time.monotonic() + timeout
    reason = "the file does not exist"
    while True:
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    return str(json.load(f)["address"])
            except (ValueError, KeyError, TypeError) as exc:
                # The scheduler may still be writing it.
                reason = f"the file holds no scheduler address ({type(exc).__name__}: {exc})"
        if time.monotonic() >= deadline:
            raise ConnectError(
                f"Could not connect to the Dask scheduler at {path} (a scheduler file) within "
                f"{timeout:g} s: {reason}. Check the path, that the scheduler is running (started "
                "with --scheduler-file on a filesystem this machine sees), and TLS settings."
            )
        time.sleep(0.05)


def _with_scheme(address: str, tls: bool) -> str:
    if "://" in address:
        return address
    return ("tls://" if tls else "tcp://") + address


def _dashboard(client: Client) -> str | None:
    try:
        link = client.dashboard_link
    except Exception:  # no dashboard service (bokeh missing, or disabled)
        return None
    return link or None


def _remote_client(address: str, opts: ClusterOptions, sec: Security | None) -> Client:
    from distributed import Client

    if address.startswith("tls://") and sec is None:
        raise ValueError(
            f"The scheduler address {address!r} uses TLS but no TLS settings were given. Pass the "
            "CA and this client's certificate and key (--tls-ca-file, --tls-cert, --tls-key) or a "
            "Dask TLS configuration file (--tls)."
        )
    try:
        return Client(address, timeout=opts.timeout, security=sec)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".strip().rstrip(".")
        raise ConnectError(
            f"Could not connect to the Dask scheduler at {address} within {opts.timeout:g} s: {reason}. "
            "Check the address, that the scheduler is running, and TLS settings."
        ) from None


@contextlib.contextmanager
def connect(opts: ClusterOptions) -> Iterator[tuple[Client, str | None]]:
    """Connect to the scheduler ``opts`` names, or start an embedded local cluster.

    Parameters
    ----------
    opts : ClusterOptions
        Where to run; see :class:`ClusterOptions`.

    Yields
    ------
    client : distributed.Client
        Connected; closed on exit (with the embedded cluster, if one was started).
    dashboard_link : str or None
        The scheduler's dashboard URL, None if it has none.

    Raises
    ------
    ValueError
        Contradictory options (``scheduler`` and ``scheduler_file``; TLS settings
        with no scheduler; a ``tls://`` address without TLS settings) or missing
        TLS files.
    ConnectError
        The scheduler (or its scheduler file) could not be reached within
        ``opts.timeout`` seconds, or it refused the connection.

    Examples
    --------
    >>> with connect(ClusterOptions(scheduler="tcp://127.0.0.1:8786")) as (client, link):  # doctest: +SKIP
    ...     model = dnmf.NMF(16, client=client).fit("ratings.zarr")
    """
    if opts.scheduler is not None and opts.scheduler_file is not None:
        raise ValueError(
            f"Both a scheduler address ({opts.scheduler!r}) and a scheduler file "
            f"({opts.scheduler_file!r}) were given. Give one of them."
        )
    if opts.timeout <= 0:
        raise ValueError(f"The connection timeout must be positive, got {opts.timeout!r}. Give seconds > 0.")
    sec = security(opts)
    if opts.scheduler is None and opts.scheduler_file is None:
        if sec is not None:
            raise ValueError(
                "TLS settings were given but no scheduler: the embedded local cluster listens on "
                "127.0.0.1 only and does not use them. Give --scheduler tls://HOST:PORT (or "
                "--scheduler-file), or drop the TLS options."
            )
        with _embedded(opts) as client:
            # Without a dashboard the scheduler still serves its HTTP routes; no link to show.
            yield (
                client,
                (getattr(client, "_dnmf_dashboard_link", None) if opts.dashboard_address is not None else None),
            )
        return
    if opts.scheduler is not None:
        address = _with_scheme(str(opts.scheduler), sec is not None)
    else:
        address = _wait_for_scheduler_file(os.fspath(opts.scheduler_file), opts.timeout)
    client = _remote_client(address, opts, sec)
    try:
        yield client, _dashboard(client)
    finally:
        client.close()


@contextlib.contextmanager
def _embedded(opts: ClusterOptions) -> Iterator[Client]:
    from distributed import Client, LocalCluster

    dashboard = opts.dashboard_address
    if dashboard is not None and str(dashboard).startswith(":"):
        dashboard = f"{opts.host}{dashboard}"  # ":0" alone would listen on every interface
    kwargs: dict[str, Any] = {
        "processes": opts.processes,
        "dashboard_address": dashboard,
        # Workers serve HTTP too (metrics, call stacks): on ``host`` as well.
        "worker_dashboard_address": f"{opts.host}:0",
    }
    if opts.processes:
        kwargs["host"] = opts.host  # in-process clusters talk inproc://, no socket
    if opts.n_workers is not None:
        kwargs["n_workers"] = opts.n_workers
    if opts.threads_per_worker is not None:
        kwargs["threads_per_worker"] = opts.threads_per_worker
    if opts.memory_limit is not None:
        kwargs["memory_limit"] = opts.memory_limit
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        link = None
        server = getattr(cluster.scheduler, "http_server", None)
        if dashboard is not None and server is not None and getattr(server, "port", None):
            # The address it listens on: Dask's own link shows the machine's public address
            # for an in-process cluster, which nothing listens on.
            host = opts.host if opts.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
            link = f"http://{host}:{server.port}/status"
        client._dnmf_dashboard_link = link
        yield client


def _blas_limit(in_process: bool):
    """One BLAS thread per Dask thread for an in-process cluster (worker processes pin it themselves).

    Dask threads each run a kernel; BLAS threads on top of them oversubscribe the cores.
    """
    if not in_process:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def cluster_info(client, link: str | None, embedded: bool) -> dict[str, Any]:
    """What the report and the progress events say about the cluster (best effort)."""
    try:
        info = scheduler_identity(client)
        workers = info.get("workers", {})
        return {
            "scheduler": info.get("address"),
            "embedded": embedded,
            "workers": len(workers),
            "threads": sum(w.get("nthreads", 0) for w in workers.values()),
            "memory_limit": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
            "dashboard": link,
        }
    except Exception:  # informational only
        return {"dashboard": link, "embedded": embedded}


@contextlib.contextmanager
def session(copts, progress):
    """Connect (or start the embedded cluster) and say where the job runs."""
    embedded = copts.scheduler is None and copts.scheduler_file is None
    with _blas_limit(embedded and not copts.processes), connect(copts) as (client, link):
        info = cluster_info(client, link, embedded)
        where = "embedded local cluster" if embedded else f"scheduler {info.get('scheduler')}"
        progress.note(
            f"running on {where}: {info.get('workers')} worker(s), {info.get('threads')} "
            f"thread(s); dashboard: {link or 'none'}"
        )
        progress.event("start", cluster=info)
        yield client, info
