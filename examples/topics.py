"""Topics of documents: NMF with the Kullback-Leibler loss on word counts.

The corpus is text that is already on this machine: the docstrings of the
installed scientific Python packages (NumPy, SciPy, scikit-learn, pandas,
Matplotlib, Dask), read from their source files with ``ast`` (nothing is
imported or downloaded). Each docstring's description — the part before its
"Parameters" section — is one document. A document-term matrix of word counts
is factorized as X ≈ W H with ``beta_loss="kullback-leibler"``,
``solver="mu"`` (the KL divergence is the natural loss for counts: it is
Poisson's log-likelihood); every row of H is a topic, and its largest
entries are the topic's top words.

Writes ``topics.md`` (top words per topic, documents per topic) and
``topics_loss.png`` under ``--out``, and prints the table.

    python examples/topics.py                    # ~6,000 docstrings, k = 12 (about a minute)
    python examples/topics.py --quick            # scikit-learn's docstrings only, k = 6 (CI)
    python examples/topics.py --path corpus/ -k 20   # your documents: a folder of .txt files,
                                                 # or one file with one document per line
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import sys
import time
import warnings
from collections import Counter

import numpy as np

PACKAGES = ("numpy", "scipy", "sklearn", "pandas", "matplotlib", "dask")
QUICK_PACKAGES = ("sklearn",)
# numpydoc section headers: the text after the first one is parameter lists and code.
_SECTION = re.compile(
    r"^\s*(Parameters|Returns|Yields|Raises|See Also|Notes|Examples|References|Attributes|Methods|"
    r"Other Parameters|Warns|Warnings)\s*\n\s*-{3,}",
    re.MULTILINE,
)
# reST markup: directives, roles, link targets, URLs, and scikit-learn's "Read more in the User Guide".
_MARKUP = re.compile(r"^\s*\.\.\s.*$|:[a-z:]+:|<[^>\n]*>|https?://\S+|Read more in the[^.]*\.", re.MULTILINE)
# Words every docstring uses whatever it is about.

_STOP = {
    "default",
    "optional",
    "returns",
    "return",
    "parameter",
    "parameters",
    "function",
    "functions",
    "method",
    "methods",
    "object",
    "objects",
    "class",
    "instance",
    "value",
    "values",
    "used",
    "use",
    "using",
    "given",
    "note",
    "new",
    "way",
    "like",
    "example",
    "set",
    "does",
    "list",
    "true",
    "false",
    "none",
    "str",
    "int",
    "float",
    "bool",
    "type",
    "specified",
    "called",
    "passed",
    "version",
    "added",
    "deprecated",
    "e",
    "g",
    "ie",
    "eg",
    "etc",
    "see",
    "also",
    "just",
    "need",
    "needs",
    "want",
    "sklearn",
    "scikit",
    "numpy",
    "scipy",
    "pandas",
    "matplotlib",
    "dask",
    "math",
    "autosummary",
}


def _package_files(name: str):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return
    root = next(iter(spec.submodule_search_locations))
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("tests", "test", "__pycache__", "_vendor", "externals"))
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(folder, f)


def docstring_corpus(packages, min_words: int = 25, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(documents, their package): the descriptions of the packages' docstrings."""
    docs, origin = [], []
    for name in packages:
        for path in _package_files(name):
            try:
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                text = ast.get_docstring(node)
                if not text:
                    continue
                cut = _SECTION.search(text)
                text = text[: cut.start()] if cut else text
                text = _MARKUP.sub(" ", text)
                if len(text.split()) >= min_words:
                    docs.append(text)
                    origin.append(name)
                    if limit and len(docs) >= limit:
                        return docs, origin
    return docs, origin


def file_corpus(path: str) -> tuple[list[str], list[str]]:
    """A folder of .txt files (one document each) or a file with one document per line."""
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f.endswith(".txt"))
        docs = []
        for f in names:
            with open(os.path.join(path, f), encoding="utf-8", errors="replace") as fh:
                docs.append(fh.read())
        return docs, names
    with open(path, encoding="utf-8", errors="replace") as fh:
        docs = [line for line in fh if line.strip()]
    return docs, [os.path.basename(path)] * len(docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--n-components", type=int, default=None, help="topics (default 12; 6 with --quick)")
    parser.add_argument("--max-iter", type=int, default=None, help="iterations (default 200; 80 with --quick)")
    parser.add_argument("--path", default=None, help="a folder of .txt files or a file with one document per line")
    parser.add_argument("--top", type=int, default=8, help="top words shown per topic")
    parser.add_argument("--out", default=os.path.join("examples", "output"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="small and fast (CI)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    k = args.n_components or (6 if args.quick else 12)
    max_iter = args.max_iter or (80 if args.quick else 200)

    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    import dnmf

    t0 = time.perf_counter()
    if args.path:
        docs, origin = file_corpus(args.path)
        source = args.path
    else:
        packages = QUICK_PACKAGES if args.quick else PACKAGES
        docs, origin = docstring_corpus(packages, limit=1500 if args.quick else None)
        source = "docstrings of " + ", ".join(packages)
    if len(docs) < k:
        raise SystemExit(f"{len(docs)} documents are too few for k = {k} topics; give more text or a smaller -k.")
    vectorizer = CountVectorizer(
        stop_words=sorted(ENGLISH_STOP_WORDS | _STOP),
        token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]{2,}\b",  # words of 3+ letters: no code fragments or numbers
        min_df=3 if args.quick else 5,
        max_df=0.3,
        max_features=3000 if args.quick else 8000,
    )
    X = vectorizer.fit_transform(docs).astype(np.float64).tocsr()
    keep = np.asarray(X.sum(axis=1)).ravel() > 0  # documents with no vocabulary word carry no topic
    X = X[keep]
    origin = [o for o, kept in zip(origin, keep, strict=True) if kept]
    vocab = vectorizer.get_feature_names_out()
    t_corpus = time.perf_counter() - t0
    print(f"corpus: {source}: {X.shape[0]:,} documents x {X.shape[1]:,} words, {X.nnz:,} non-zeros ({t_corpus:.1f} s)")

    t0 = time.perf_counter()
    model = dnmf.NMF(
        k,
        beta_loss="kullback-leibler",
        solver="mu",
        init="nndsvda",
        max_iter=max_iter,
        tol=1e-4,
        random_state=args.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning in --quick mode is expected
        W = model.fit_transform(X)
    t_fit = time.perf_counter() - t0
    print(f"fit: {model.n_iter_} iterations in {t_fit:.1f} s, KL loss sqrt(2 D) {model.reconstruction_err_:.5g}")

    H = model.components_
    assigned = np.argmax(W, axis=1)
    rows = []
    for t in range(k):
        top = np.argsort(-H[t], kind="stable")[: args.top]
        members = np.flatnonzero(assigned == t)
        common = Counter(origin[i] for i in members).most_common(1)
        rows.append((t + 1, len(members), common[0][0] if common else "–", " ".join(vocab[top])))

    header = ("topic", "docs", "mostly from", f"top {args.top} words")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    print()
    print(f"{header[0]:>{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:<{widths[2]}}  {header[3]}")
    for r in rows:
        print(f"{r[0]:>{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")

    os.makedirs(args.out, exist_ok=True)
    md = os.path.join(args.out, "topics.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(f"# Topics: dnmf.NMF(k={k}, beta_loss='kullback-leibler', solver='mu')\n\n")
        f.write(
            f"Corpus: {source}; {X.shape[0]:,} documents, {X.shape[1]:,} words. "
            f"{model.n_iter_} iterations, {t_fit:.1f} s.\n\n"
        )
        f.write("| " + " | ".join(header) + " |\n|---:|---:|:---|:---|\n")
        for r in rows:
            f.write(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |\n")
    print()
    print(f"wrote {md}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from dnmf.plot import loss_curve

        png = os.path.join(args.out, "topics_loss.png")
        loss_curve(model, path=png, title=f"KL NMF of {X.shape[0]:,} documents, k = {k}")
        print(f"wrote {png}")
    except ImportError:
        print("matplotlib is not installed: no loss plot (pip install dnmf[plot])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
