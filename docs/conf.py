"""Sphinx configuration of dnmf's documentation: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

Pages are Markdown (MyST) or reStructuredText; the API reference is autodoc with numpydoc
docstrings. Nothing is downloaded at build time (no intersphinx), so the build works offline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import dnmf  # noqa: E402

project = "dnmf"
author = "the dnmf developers"
copyright = "the dnmf developers (BSD-3-Clause)"
version = release = dnmf.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# Markdown: "#section" links to headings (as on GitHub), $...$ math, ::: fences.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]

# API reference: members in source order; numpydoc renders the docstrings and lists no class
# members itself (autodoc's :members: does).
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

html_theme = "furo"
html_title = f"dnmf {release}"
html_static_path: list[str] = []
html_show_sourcelink = True
