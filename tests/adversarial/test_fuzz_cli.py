"""Fuzz of ``dnmf ingest`` and ``dnmf fit`` inputs: random CSV bytes and random option values.

Every case must end with exit code 0 or 2, a failure must be exactly one line on
standard error with no traceback, and no file that existed before may change
(except a store replaced on purpose with --overwrite). The commands run
in-process through click's CliRunner, so hundreds of cases take seconds.
``FUZZ_EXAMPLES`` scales the number of cases (default 500 for ingest).
"""

from __future__ import annotations

import gzip
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import invoke, tree_hashes

pytestmark = pytest.mark.adversarial

N_INGEST = int(os.environ.get("FUZZ_EXAMPLES", "500"))
N_FIT = max(10, N_INGEST // 20)

_token = st.one_of(
    st.integers(-5, 50).map(str),
    st.sampled_from(["", "nan", "inf", "-inf", "-1", "1e308", "1e400", "0", "abc", "٣", "0x10", " 7 ", '"q"', "None"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)


@st.composite
def csv_bytes(draw):
    kind = draw(st.sampled_from(["table", "table", "table", "raw", "gzip", "empty"]))
    if kind == "raw":
        return draw(st.binary(max_size=300))
    if kind == "empty":
        return draw(st.sampled_from([b"", b"\n", b"user,item,rating\n", b"\xef\xbb\xbf"]))
    sep = draw(st.sampled_from([",", ",", ";", "\t", "|"]))
    header = draw(
        st.sampled_from(
            [
                ["user", "item", "rating"],
                ["user", "item"],
                ["userId", "movieId", "rating"],
                ["user", "user", "rating"],
                [],
            ]
        )
    )
    rows = draw(st.lists(st.lists(_token, min_size=1, max_size=4), max_size=25))
    lines = [sep.join(header)] if header else []
    lines += [sep.join(r) for r in rows]
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))
    data = text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else text.encode("latin-1", "replace")
    return gzip.compress(data) if kind == "gzip" else data


_col = st.one_of(st.none(), st.sampled_from(["user", "item", "rating", "userId", "", "nope"]), st.text(max_size=4))


@st.composite
def ingest_options(draw):
    opts = []
    for flag, values in (
        ("--format", st.sampled_from(["auto", "csv", "parquet", "mtx", "npz", "npy", "xml", ""])),
        ("--user-col", _col),
        ("--item-col", _col),
        ("--value-col", _col),
        ("--sep", st.sampled_from([",", ";", "\t", "", "ab", "\n", '"'])),
        ("--duplicates", st.sampled_from(["sum", "last", "max"])),
        ("--on-invalid", st.sampled_from(["raise", "drop", "ignore"])),
        ("--rows-per-block", st.sampled_from(["1", "3", "1000", "0", "-2", "x", "1e3"])),
        ("--dtype", st.sampled_from(["float32", "float64", "int8"])),
    ):
        if draw(st.booleans()):
            value = draw(values)
            if value is not None:
                opts += [flag, value]
    return opts


NAMES = ["r.csv", "r.tsv", "r.csv.gz", "r.txt", "r.parquet", "r.mtx", "r.npy", "r.npz", "r", "dir.csv"]


def _check(res, root, before, replaced=()):
    assert res.exit_code in (0, 2), (res.exit_code, res.stderr, res.exception)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    if res.exit_code != 0:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    after = tree_hashes(root)
    for path, digest in before.items():
        if any(path.startswith(r) for r in replaced) and res.exit_code == 0:
            continue
        assert after.get(path) == digest, f"{path} changed or vanished ({res.stderr})"


def _setup(root, name, data):
    """An input file, an existing store and an unrelated file; returns the input's path."""
    from dnmf.storage import arrays as io

    with open(os.path.join(root, "keep.txt"), "w") as fh:
        fh.write("not yours")
    with open(os.path.join(root, "seed.csv"), "w") as fh:
        fh.write("user,item,rating\n1,2,3\n2,1,4\n")
    io.ingest(os.path.join(root, "seed.csv"), os.path.join(root, "existing.zarr"))
    path = os.path.join(root, name)
    if name == "dir.csv":
        os.mkdir(path)
    else:
        with open(path, "wb") as fh:
            fh.write(data)
    return path


@settings(max_examples=N_INGEST, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=csv_bytes(),
    name=st.sampled_from(NAMES),
    opts=ingest_options(),
    target=st.sampled_from(["new", "new", "existing", "existing-overwrite", "input", "root", "keep"]),
)
def test_fuzz_ingest(data, name, opts, target):
    with tempfile.TemporaryDirectory(prefix="dnmf-fuzz-") as root:
        path = _setup(root, name, data)
        out = {
            "new": os.path.join(root, "out.zarr"),
            "existing": os.path.join(root, "existing.zarr"),
            "existing-overwrite": os.path.join(root, "existing.zarr"),
            "input": path,
            "root": root,
            "keep": os.path.join(root, "keep.txt"),
        }[target]
        extra = ["--overwrite"] if target in ("existing-overwrite", "input", "root", "keep") else []
        before = tree_hashes(root)
        res = invoke("ingest", path, "-o", out, *opts, *extra)
        _check(res, root, before, replaced=("existing.zarr",) if target == "existing-overwrite" else ())


_fit_opt = st.sampled_from(
    [
        ["--solver", "mu"],
        ["--solver", "anls-bpp"],
        ["--solver", "nope"],
        ["--beta-loss", "kullback-leibler", "--solver", "mu"],
        ["--beta-loss", "-1"],
        ["--init", "random"],
        ["--init", "nndsvd"],
        ["--tol", "-1"],
        ["--tol", "0"],
        ["--max-time", "0"],
        ["--alpha-W", "0.1"],
        ["--l1-ratio", "2"],
        ["-k", "0"],
        ["-k", "1000"],
        ["-k", "x"],
        ["--max-iter", "0"],
        ["--seed", "-1"],
        ["--threads-per-worker", "0"],
        ["--memory-limit", "lots"],
    ]
)


@settings(max_examples=N_FIT, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=csv_bytes(),
    name=st.sampled_from(["r.csv", "r.tsv", "r.csv.gz", "r.npy"]),
    opts=st.lists(_fit_opt, max_size=3),
    ingest=ingest_options(),
    target=st.sampled_from(["new", "existing", "input", "keep"]),
)
def test_fuzz_fit(data, name, opts, ingest, target):
    with tempfile.TemporaryDirectory(prefix="dnmf-fuzz-") as root:
        path = _setup(root, name, data)
        out = {
            "new": os.path.join(root, "model"),
            "existing": os.path.join(root, "existing.zarr"),
            "input": path,
            "keep": os.path.join(root, "keep.txt"),
        }[target]
        before = tree_hashes(root)
        flat = [a for o in opts for a in o]
        res = invoke("fit", path, "-o", out, "-k", "2", "--max-iter", "3", "-q", *ingest, *flat)
        _check(res, root, before)
