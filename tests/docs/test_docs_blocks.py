"""Every code block of README.md and of the documentation (docs/**/*.md, *.rst) runs.

Each fenced block is one test case, named ``FILE:LINE`` (the line of its opening fence):

- ``python`` blocks of one document run in order, in one fresh interpreter per document (a
  subprocess with one namespace), inside a temporary working directory; a block passes when
  it raises nothing and emits no warning a user would see (the interpreter's default
  warning filters, as in a script).
- ``bash``/``sh``/``shell``/``console`` blocks whose first command starts with ``dnmf `` or
  ``python examples/`` run with ``bash -e -o pipefail`` in the same directory, with this
  interpreter's ``bin`` directory first on PATH (``console`` blocks: only the ``$ `` lines).
  A block passes when every command succeeds and none prints a ``warning: `` line (dnmf's
  form of a Python warning). The directory holds a copy of ``examples/``, nothing else: the
  documents make their own data.
- A block that cannot run here (``pip install``, cluster deployment, interactive commands)
  carries a visible marker right before its fence: ``<!-- skip: REASON -->`` in Markdown,
  ``.. skip: REASON`` in reStructuredText. It is reported as skipped with that reason. A shell
  block with neither a runnable first command nor a marker fails, asking for one.

Blocks of one document share their directory and namespace, so a case first runs the blocks
before it that have not run yet: ``-k README.md:250`` works on its own. After a failure, the
later blocks of that document are skipped (naming the failed block).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

from tests.helpers import REPO_ROOT as ROOT

BIN = Path(sys.executable).parent
PYTHON_LANGS = {"python", "py", "python3"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
RUNNABLE_SHELL = re.compile(r"^(dnmf\s|python3? examples/)")
BLOCK_TIMEOUT = 300  # seconds; the README's blocks take a few seconds each
# Warnings that depend on the machine, not on the documents.
IGNORED_WARNINGS = [re.compile(r"Port \d+ is already in use")]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence / directive
    lang: str
    code: str
    skip: str | None  # the marker's reason

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"

    @property
    def kind(self) -> str:
        return "python" if self.lang in PYTHON_LANGS else "shell"


def documents() -> list[Path]:
    docs = ROOT / "docs"
    found = [p for pattern in ("*.md", "*.rst") for p in docs.rglob(pattern)] if docs.is_dir() else []
    found = [p for p in found if "_build" not in p.relative_to(docs).parts and "generated" not in p.parts]
    return [ROOT / "README.md", *sorted(found)]


MD_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
MD_SKIP = re.compile(r"^\s*<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")
RST_CODE = re.compile(r"^(?P<indent> *)\.\. (?:code-block|code|sourcecode)::\s*(?P<lang>\S+)\s*$")
RST_SKIP = re.compile(r"^\s*\.\. skip:\s*(?P<reason>.+?)\s*$")


def _marker(lines: list[str], i: int, pattern: re.Pattern) -> str | None:
    """The skip reason on the last non-blank line before line i, if it is a marker."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    m = pattern.match(lines[j]) if j >= 0 else None
    return m.group("reason") if m else None


def markdown_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = MD_FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        info = m.group("info").strip()
        lang = info.split()[0].lower() if info else ""
        body, j = [], i + 1
        close = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if lang in PYTHON_LANGS | SHELL_LANGS:
            blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n", _marker(lines, i, MD_SKIP)))
        i = j + 1
    return blocks


def rst_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = RST_CODE.match(line)
        if not m or m.group("lang").lower() not in PYTHON_LANGS | SHELL_LANGS:
            continue
        indent, body, j = len(m.group("indent")), [], i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j].startswith(" " * (indent + 1))):
            body.append(lines[j])
            j += 1
        code = textwrap.dedent("\n".join(body)).strip("\n")
        code = "\n".join(ln for ln in code.splitlines() if not re.match(r"^:\w[\w-]*:", ln))  # options
        code = code.strip("\n") + "\n"
        blocks.append(Block(path, i + 1, m.group("lang").lower(), code, _marker(lines, i, RST_SKIP)))
    return blocks


def all_blocks() -> list[Block]:
    out = []
    for doc in documents():
        out += rst_blocks(doc) if doc.suffix == ".rst" else markdown_blocks(doc)
    return out


def shell_commands(block: Block) -> str:
    if block.lang != "console":
        return block.code
    cmds = [ln[2:] for ln in block.code.splitlines() if ln.startswith("$ ")]
    return "\n".join(cmds) + "\n"


def first_command(script: str) -> str:
    for ln in script.splitlines():
        if ln.strip() and not ln.lstrip().startswith("#"):
            return ln.strip()
    return ""


# The interpreter that runs one document's python blocks: reads {"name", "code"} lines on stdin,
# answers {"error", "warnings", "seconds"} lines on the file descriptor given as argv[1].
RUNNER = r"""
import json, os, sys, time, traceback, warnings
reply = os.fdopen(int(sys.argv[1]), "w")
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
for line in sys.stdin:
    msg = json.loads(line)
    t0 = time.perf_counter()
    error = None
    with warnings.catch_warnings(record=True) as caught:
        try:
            exec(compile(msg["code"], msg["name"], "exec"), namespace)
        except BaseException:
            error = traceback.format_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    shown = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    reply.write(json.dumps({"error": error, "warnings": shown, "seconds": time.perf_counter() - t0}) + "\n")
    reply.flush()
"""


class Document:
    """One document's working directory, python interpreter and progress."""

    def __init__(self, blocks: list[Block], workdir: Path):
        self.blocks = blocks
        self.workdir = workdir
        self.done: set[str] = set()
        self.failed: str | None = None
        self.proc: subprocess.Popen | None = None
        self.reply = None
        self.log = workdir.parent / f"{workdir.name}.log"
        self.log_pos = 0
        shutil.copytree(ROOT / "examples", workdir / "examples", ignore=shutil.ignore_patterns("output", "__pycache__"))

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "MPLBACKEND": "Agg",
            "PYTHONUNBUFFERED": "1",
        }

    def output(self) -> str:
        """What the interpreter printed since the last call."""
        with open(self.log, encoding="utf-8", errors="replace") as f:
            f.seek(self.log_pos)
            text = f.read()
            self.log_pos = f.tell()
        return text

    def python(self, block: Block) -> tuple[str | None, list[str]]:
        if self.proc is None:
            r, w = os.pipe()
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", RUNNER, str(w)],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=self.env(),
                    pass_fds=(w,),
                    text=True,
                )
            os.close(w)
            self.reply = os.fdopen(r)
        self.proc.stdin.write(json.dumps({"name": block.id, "code": block.code}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.reply], [], [], BLOCK_TIMEOUT)
        if not ready:
            self.close()
            return f"timed out after {BLOCK_TIMEOUT} s", []
        line = self.reply.readline()
        if not line:
            return f"the interpreter exited ({self.proc.wait()})", []
        res = json.loads(line)
        shown = [w for w in res["warnings"] if not any(p.search(w) for p in IGNORED_WARNINGS)]
        return res["error"], shown

    def shell(self, block: Block) -> str | None:
        script = shell_commands(block)
        try:
            proc = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=self.workdir,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {BLOCK_TIMEOUT} s"
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            return f"exit status {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: ")]  # dnmf's warning lines
        warned = [ln for ln in warned if not any(p.search(ln) for p in IGNORED_WARNINGS)]
        if warned:
            return "the commands printed warnings:\n" + "\n".join(warned)
        return None

    def run(self, block: Block) -> None:
        """Run one block; raises AssertionError with what went wrong."""
        t0 = time.perf_counter()
        if block.kind == "python":
            error, shown = self.python(block)
            sys.stdout.write(self.output())
            if error is None and shown:
                error = "the block emitted warnings:\n" + "\n".join(shown)
        else:
            error = self.shell(block)
        self.done.add(block.id)
        print(f"{block.id}: {time.perf_counter() - t0:.1f} s")
        if error is not None:
            self.failed = block.id
            raise AssertionError(f"{block.id} ({block.lang}) failed: {error}")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.reply.close()
            self.proc = None


BLOCKS = all_blocks()


def runnable_error(block: Block) -> str | None:
    """Why this block cannot run here without a skip marker, or None."""
    if block.kind == "shell" and not RUNNABLE_SHELL.match(first_command(shell_commands(block))):
        return (
            f"{block.id}: a {block.lang} block that does not start with `dnmf ` or `python examples/` "
            "runs only with a skip marker before its fence: <!-- skip: REASON --> (Markdown) or "
            ".. skip: REASON (reStructuredText)"
        )
    return None


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    opened: dict[Path, Document] = {}

    def get(path: Path) -> Document:
        if path not in opened:
            name = re.sub(r"[^\w.-]", "_", path.relative_to(ROOT).as_posix())
            workdir = tmp_path_factory.mktemp(f"doc-{name}") / "work"
            workdir.mkdir()
            opened[path] = Document([b for b in BLOCKS if b.path == path], workdir)
        return opened[path]

    yield get
    for doc in opened.values():
        doc.close()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(block, docs):
    if block.skip is not None:
        pytest.skip(f"marked in the source: {block.skip}")
    error = runnable_error(block)
    if error:
        pytest.fail(error)
    doc = docs(block.path)
    for earlier in doc.blocks:
        if earlier.id == block.id:
            break
        if earlier.id in doc.done or earlier.skip is not None or runnable_error(earlier):
            continue
        if doc.failed is None:
            doc.run(earlier)  # a case selected alone: what comes before it runs first
    if doc.failed is not None:
        pytest.skip(f"not run: {doc.failed}, before it in the same document, failed")
    doc.run(block)


def test_documents_have_blocks():
    """The collection sees the README's blocks (a broken parser must not pass by finding none)."""
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert len(readme) >= 10
    assert {b.kind for b in readme} == {"python", "shell"}


def test_parser_reads_markers_and_fences(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "text\n\n<!-- skip: needs a cluster -->\n```bash\nkubectl apply -f x\n```\n\n"
        "- item\n\n  ```python\n  x = 1\n  ```\n\n````python\n```\n````\n\n```toml\na = 1\n```\n",
        encoding="utf-8",
    )
    blocks = markdown_blocks(md)
    assert [(b.line, b.lang, b.code, b.skip) for b in blocks] == [
        (4, "bash", "kubectl apply -f x\n", "needs a cluster"),
        (10, "python", "x = 1\n", None),
        (14, "python", "```\n", None),
    ]
    rst = tmp_path / "x.rst"
    rst.write_text(
        "Title\n\n.. skip: waits for Enter\n\n.. code-block:: bash\n\n   dnmf demo\n\n"
        ".. code-block:: python\n   :caption: c\n\n   import dnmf\n   x = 1\n\nafter\n",
        encoding="utf-8",
    )
    blocks = rst_blocks(rst)
    assert [(b.line, b.lang, b.code, b.skip) for b in blocks] == [
        (5, "bash", "dnmf demo\n", "waits for Enter"),
        (9, "python", "import dnmf\nx = 1\n", None),
    ]
