#!/usr/bin/env python3
"""Fit dnmf on a SLURM cluster with dask-jobqueue: workers run as SLURM jobs.

Run it on a login node (or in a small SLURM job) inside the Python environment that has
dnmf and dask-jobqueue; the same environment must be on the compute nodes' shared filesystem:

    python deploy/slurm/slurm_cluster.py ratings.zarr -k 64 -o model.zarr --checkpoint runs/job1 \\
        --jobs 4 --cores 8 --memory 32GB --walltime 04:00:00 --queue normal --account myproject

The scheduler runs in this process; each SLURM job is one Dask worker process with --cores
threads (the kernels release the GIL). Connections are TLS with a throw-away certificate unless
--no-tls: a login node is shared, and anyone who reaches an open scheduler can run code as you.
If this process dies, run it again with the same --checkpoint: the fit resumes there.
--print-job-script shows the batch script dask-jobqueue would submit, and submits nothing.
"""

from __future__ import annotations

import argparse
import os
import sys


def make_cluster(args):
    from dask_jobqueue import SLURMCluster

    kwargs = {}
    if not args.no_tls:
        from distributed import Security

        # An in-memory CA and certificate for this run; dask-jobqueue writes them for the workers
        # into shared_temp_directory (on the shared filesystem, readable by you only).
        shared = args.shared_temp_directory or ".dnmf-slurm-tls"
        os.makedirs(shared, mode=0o700, exist_ok=True)
        kwargs.update(security=Security.temporary(), protocol="tls://", shared_temp_directory=shared)
    if args.interface:
        kwargs["interface"] = args.interface
    return SLURMCluster(
        queue=args.queue,
        account=args.account,
        cores=args.cores,
        processes=1,
        memory=args.memory,
        walltime=args.walltime,
        # Node-local scratch for spilled data; never the shared filesystem.
        local_directory=args.local_directory,
        job_name=args.job_name,
        job_extra_directives=args.sbatch,
        worker_extra_args=["--lifetime", args.lifetime, "--lifetime-stagger", "2m"] if args.lifetime else [],
        scheduler_options={"dashboard_address": ":8787"},
        **kwargs,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", nargs="?", help="matrix store (local path on the shared filesystem, or s3://...)")
    p.add_argument("-k", "--n-components", type=int, default=32)
    p.add_argument("-o", "--output", help="model directory (on the shared filesystem)")
    p.add_argument("--checkpoint", help="checkpoint directory (shared filesystem or s3://...)")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--solver", default="cd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="SLURM jobs = Dask workers")
    p.add_argument("--cores", type=int, default=4, help="CPUs per job (worker threads)")
    p.add_argument("--memory", default="16GB", help="memory per job; see the README's memory model")
    p.add_argument("--walltime", default="02:00:00")
    p.add_argument("--queue", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--job-name", default="dnmf-worker")
    p.add_argument("--sbatch", action="append", default=[], help="extra #SBATCH directive, e.g. --sbatch=--qos=long")
    p.add_argument("--local-directory", default="$TMPDIR", help="worker scratch space on the node")
    p.add_argument("--lifetime", help="restart workers before the walltime ends, e.g. 1h50m")
    p.add_argument(
        "--shared-temp-directory",
        help="where TLS files for the workers go, on the shared filesystem (default ./.dnmf-slurm-tls, mode 700)",
    )
    p.add_argument("--no-tls", action="store_true", help="plain TCP (only on a network you trust)")
    p.add_argument("--interface", help="network interface the scheduler and workers use, e.g. ib0")
    p.add_argument("--print-job-script", action="store_true")
    args = p.parse_args(argv)

    with make_cluster(args) as cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        if not (args.input and args.output):
            p.error("INPUT and -o/--output are needed to fit")
        from distributed import Client

        import dnmf

        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            print(f"scheduler {cluster.scheduler_address}, dashboard {client.dashboard_link}", flush=True)
            client.wait_for_workers(1)  # the rest join as SLURM starts their jobs
            model = dnmf.NMF(
                args.n_components,
                solver=args.solver,
                max_iter=args.max_iter,
                random_state=args.seed,
                client=client,
                checkpoint=args.checkpoint,
                verbose=1,
            )
            resume = args.checkpoint if args.checkpoint and _has_checkpoint(args.checkpoint) else None
            model.fit(args.input, resume=resume)
            model.save(args.output)
            print(f"done: {model.n_iter_} iterations, loss {model.reconstruction_err_:.6g}, model {args.output}")
    return 0


def _has_checkpoint(path: str) -> bool:
    from dnmf.storage import checkpoints

    return checkpoints.exists(path)


if __name__ == "__main__":
    sys.exit(main())
