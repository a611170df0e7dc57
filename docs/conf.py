# Sphinx configuration of the stpredict documentation.
#
#   pip install -e '.[doc]'
#   sphinx-build -b html docs docs/_build/html
#
# Offline (no access to the other projects' object inventories), build with STPREDICT_DOCS_OFFLINE=1: intersphinx
# and nitpicky reference checks are turned off, so that `-W` only reports problems of this project.
from __future__ import annotations

import os
import shutil
import sys
from datetime import UTC, datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

# -- Project information -----------------------------------------------------------------------------------

_meta = metadata("stpredict-he")  # the distribution; the import is stpredict
project = "stpredict"
author = _meta["Author"] or "stpredict developers"
copyright = f"{datetime.now(tz=UTC):%Y}, {author}"
release = version = _meta["Version"]
repository_url = "https://github.com/scverse/stpredict"

OFFLINE = os.environ.get("STPREDICT_DOCS_OFFLINE", "") not in {"", "0"}

# -- Tutorials ---------------------------------------------------------------------------------------------
# The notebooks live in ../tutorials (the tests execute them there); Sphinx only reads files below docs/, so
# copy them into the git-ignored docs/generated/ folder. They are rendered with their committed outputs.

_TUTORIALS = HERE / "generated" / "tutorials"
_TUTORIALS.mkdir(parents=True, exist_ok=True)
for _nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
    _dest = _TUTORIALS / _nb.name
    if not _dest.exists() or _dest.read_bytes() != _nb.read_bytes():
        shutil.copyfile(_nb, _dest)

# -- General configuration ---------------------------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",  # after napoleon
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxcontrib.bibtex",
    "sphinx_copybutton",
    "sphinx_design",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_templates",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "generated/tutorials/*.py",
    "jupyter_execute",  # myst-nb's output folder: never read back as source
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
default_role = "literal"
pygments_style = "default"

# MyST and myst-nb
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath", "html_image", "html_admonition"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks are executed by tests/test_tutorials.py, not at doc build
nb_merge_streams = True
nb_output_stderr = "show"

# autodoc / autosummary / napoleon
autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "groupwise"
autodoc_default_options = {"members": True}
autodoc_typehints_description_target = "documented"
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
# stpredict's Returns sections are prose (types live in the signature): render them as written, not as a
# "type: description" field, which would turn their first line into a type.
napoleon_custom_sections = ["Returns"]
typehints_defaults = "braces"
always_document_param_types = False

# bibliography
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

# cross-references to the rest of scverse and to the scientific Python stack
intersphinx_mapping = (
    {}
    if OFFLINE
    else {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "scipy": ("https://docs.scipy.org/doc/scipy/", None),
        "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
        "matplotlib": ("https://matplotlib.org/stable/", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
        "spatialdata": ("https://spatialdata.scverse.org/en/stable/", None),
        "torch": ("https://docs.pytorch.org/docs/stable/", None),
    }
)
intersphinx_timeout = 10
# Nitpicky reference checks need the inventories above; offline every external type would be reported.
nitpicky = not OFFLINE
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy\.typing|npt)\..*"),
    (r"py:.*", r"(ArrayLike|NDArray|Axes|Figure)"),
    (r"py:.*", r"stpredict\..*\._\w+.*"),  # private modules and classes behind the public names
]

suppress_warnings = ["mystnb.unknown_mime_type"]

# -- HTML output -------------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "stpredict"
html_static_path: list[str] = []
html_theme_options = {
    "repository_url": repository_url,
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
html_show_sphinx = False
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True


# -- Cross-references to stp.settings -----------------------------------------------------------------------
# Docstrings refer to ``stpredict.settings.<field>``: the fields are documented on the Settings class.


def _resolve_settings_reference(app, env, node, contnode):
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("stpredict.settings."):
        return None
    field = target.removeprefix("stpredict.settings.")
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], f"stpredict._settings.Settings.{field}", node, contnode
    )


def setup(app):
    app.connect("missing-reference", _resolve_settings_reference)
