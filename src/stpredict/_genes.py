"""Gene identifiers: resolve what a user types against a table's ``var`` (pure pandas).

A table names its genes by ``var_names``, which are often versioned Ensembl ids (``ENSMUSG00000090223.1``),
while people type symbols (``Pcp4``). :func:`resolve_genes` maps the user's names onto ``var_names`` in
this order, each step only for the names the previous ones left:

1. an exact ``var_names`` match;
2. the same with Ensembl version suffixes stripped on both sides (``ENSMUSG00000090223`` matches
   ``ENSMUSG00000090223.1`` and the other way round);
3. a symbol column of ``var``: ``gene_symbols_key`` when given, else the first of ``gene_symbol``
   (spatialdata-io's convention), ``gene_symbols`` and ``gene_ids`` that exists (``gene_ids`` holds Ensembl
   ids when ``var_names`` are symbols, as scanpy's 10x readers write them; versions are stripped there too);
4. case-insensitively over all of the above, only where that names a single gene.

A name that matches nothing raises a :class:`KeyError` listing close matches (difflib) and, when ``var`` has no
symbol column, how to add one; a name that matches several genes raises a :class:`KeyError` listing them.
:func:`display_names` gives the label to show for each gene: its symbol when ``var`` has one, else its name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._args import close_matches

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["SYMBOL_COLUMNS", "display_names", "match_genes", "resolve_genes", "strip_version", "symbol_column"]

#: ``var`` columns searched for gene symbols, in order, when no ``gene_symbols_key`` is given.
SYMBOL_COLUMNS: tuple[str, ...] = ("gene_symbol", "gene_symbols", "gene_ids")
#: Columns holding display symbols (``gene_ids`` holds ids, so it never replaces a name in a plot).
_DISPLAY_COLUMNS: tuple[str, ...] = ("gene_symbol", "gene_symbols")

# ENSG00000141510.17, ENSMUSG00000090223.1, ENST…, GENCODE's ENSG00000002586.20_PAR_Y
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*\d{6,})\.\d+(_PAR_Y)?$")


def _var(var: Any) -> pd.DataFrame:
    """``var`` itself, or ``.var`` of an AnnData."""
    v = var if isinstance(var, pd.DataFrame) else getattr(var, "var", var)
    if not isinstance(v, pd.DataFrame):
        msg = f"Expected a var DataFrame or an AnnData, got {type(var).__name__}."
        raise TypeError(msg)
    return v


def strip_version(name: str) -> str:
    """An Ensembl id without its version suffix; any other name unchanged.

    Parameters
    ----------
    name
        A gene identifier.

    Returns
    -------
    ``ENSMUSG00000090223`` for ``ENSMUSG00000090223.1`` (``_PAR_Y`` kept); other names as given.

    Examples
    --------
    >>> from stpredict._genes import strip_version
    >>> strip_version("ENSMUSG00000090223.1"), strip_version("Pcp4")
    ('ENSMUSG00000090223', 'Pcp4')
    """
    m = _ENSEMBL_VERSION.match(name)
    return m.group(1) + (m.group(2) or "") if m else name


def symbol_column(var: Any, gene_symbols_key: str | None = None, *, display: bool = False) -> str | None:
    """The ``var`` column holding gene symbols: ``gene_symbols_key``, else the first of :data:`SYMBOL_COLUMNS`.

    Parameters
    ----------
    var
        A table's ``var`` (or the AnnData).
    gene_symbols_key
        A column chosen by the user; it must exist.
    display
        Only columns of symbols to display (``gene_ids`` is skipped unless named by ``gene_symbols_key``).

    Returns
    -------
    The column name, or ``None`` when there is none.
    """
    v = _var(var)
    if gene_symbols_key is not None:
        if gene_symbols_key not in v.columns:
            msg = (
                f"gene_symbols_key={gene_symbols_key!r} is not a var column; "
                f"the columns are {[str(c) for c in v.columns]}."
            )
            raise KeyError(msg)
        return gene_symbols_key
    return next((c for c in (_DISPLAY_COLUMNS if display else SYMBOL_COLUMNS) if c in v.columns), None)


def _lookup(names: Iterable[str], targets: Iterable[str]) -> dict[str, list[str]]:
    """``name → [var_name, …]`` (every var_name a name stands for, in table order, without repeats)."""
    out: dict[str, list[str]] = {}
    for n, t in zip(names, targets, strict=True):
        hits = out.setdefault(n, [])
        if t not in hits:
            hits.append(t)
    return out


def resolve_genes(
    var: Any,
    genes: str | Sequence[str],
    *,
    gene_symbols_key: str | None = None,
    what: str = "the table",
) -> list[str]:
    """Map user gene names (ids, versionless ids, symbols) onto ``var_names``.

    Parameters
    ----------
    var
        A table's ``var`` (or the AnnData); its index is ``var_names``.
    genes
        One name or a sequence of names: ``var_names``, Ensembl ids with or without version, or symbols.
    gene_symbols_key
        The ``var`` column of symbols (default: the first of ``gene_symbol``, ``gene_symbols``, ``gene_ids``).
    what
        How to call the table in error messages.

    Returns
    -------
    The ``var_names`` of ``genes``, in the order given (one per name; a repeated name repeats).

    Raises
    ------
    KeyError
        If a name matches no gene (the message lists close matches and how to add symbols) or several genes.

    Examples
    --------
    >>> import pandas as pd
    >>> from stpredict._genes import resolve_genes
    >>> var = pd.DataFrame({"gene_symbol": ["Pcp4", "Gfap"]}, index=["ENSMUSG00000090223.1", "ENSMUSG00000020932.2"])
    >>> resolve_genes(var, ["Pcp4", "ENSMUSG00000020932", "gfap"])
    ['ENSMUSG00000090223.1', 'ENSMUSG00000020932.2', 'ENSMUSG00000020932.2']
    """
    v = _var(var)
    requested = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    names = [str(n) for n in v.index]
    col = symbol_column(v, gene_symbols_key)
    exact = set(names)
    versionless = _lookup((strip_version(n) for n in names), names)
    symbols: dict[str, list[str]] = {}
    if col is not None:
        ok = v[col].notna().to_numpy()
        sym = [str(s) for s in v[col].to_numpy()[ok]]
        tgt = [n for n, k in zip(names, ok, strict=True) if k]
        symbols = _lookup(sym, tgt)
        for s, t in zip(sym, tgt, strict=True):  # versionless ids in an id column
            if (s2 := strip_version(s)) != s:
                symbols.setdefault(s2, [])
                if t not in symbols[s2]:
                    symbols[s2].append(t)
    folded: dict[str, list[str]] = {}
    for table in ({n: [n] for n in names}, versionless, symbols):
        for k, targets in table.items():
            hits = folded.setdefault(k.casefold(), [])
            hits.extend(t for t in targets if t not in hits)

    out: list[str] = []
    unknown: list[str] = []
    ambiguous: dict[str, list[str]] = {}
    for g in requested:
        if g in exact:
            out.append(g)
            continue
        bare = strip_version(g)
        hits = (
            versionless.get(bare)
            or symbols.get(g)
            or symbols.get(bare)
            or folded.get(g.casefold())
            or folded.get(bare.casefold())
        )
        if not hits:
            unknown.append(g)
        elif len(hits) > 1:
            ambiguous[g] = hits
        else:
            out.append(hits[0])
    if unknown:
        raise KeyError(_unknown_message(unknown, names, symbols, col, what))
    if ambiguous:
        lines = "; ".join(f"{g!r} names {len(h)} genes ({', '.join(h[:5])})" for g, h in ambiguous.items())
        msg = f"Ambiguous gene names in {what}: {lines}. Pass the var_names to choose."
        raise KeyError(msg)
    return out


def match_genes(var: Any, genes: Sequence[str], candidates: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(names, unmatched)``: each of ``genes`` as the candidate ``var_names`` it names, by :func:`resolve_genes`.

    Names already among ``candidates`` are kept; the others are looked up in ``var`` restricted to the
    candidates (versionless ids, symbols, case), one at a time. A name that names no candidate, or several, is
    kept as given and listed in ``unmatched`` for the caller's own message.
    """
    v = _var(var)
    pool = set(candidates)
    sub = v.loc[[n for n in v.index if n in pool]]
    out: list[str] = []
    unmatched: list[str] = []
    for g in genes:
        if g in pool:
            out.append(g)
            continue
        try:
            (hit,) = resolve_genes(sub, [g])
        except KeyError:
            unmatched.append(g)
            hit = g
        out.append(hit)
    return out, unmatched


def _unknown_message(
    unknown: Sequence[str], names: Sequence[str], symbols: dict[str, list[str]], col: str | None, what: str
) -> str:
    vocabulary = list(dict.fromkeys([*names, *symbols]))
    parts = []
    for g in unknown[:10]:
        close = close_matches(g, vocabulary, n=3, cutoff=0.6)
        parts.append(f"{g!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    msg = f"{len(unknown)} of the genes asked for are not in {what}: {', '.join(parts)}{more}."
    if col is None and _looks_like_ids(names):
        example = ", ".join(repr(n) for n in names[:2])
        msg += (
            f" Its var_names look like {example} and it has no column of gene symbols "
            f"(var[{SYMBOL_COLUMNS[0]!r}]): add one, e.g. table.var['gene_symbol'] = symbols, "
            "or pass gene_symbols_key= naming the var column that holds them."
        )
    elif col is not None:
        msg += f" Names were looked up in var_names and in var[{col!r}]."
    return msg


def _looks_like_ids(names: Sequence[str]) -> bool:
    """Whether most ``var_names`` are Ensembl ids (so people will want symbols)."""
    sample = names[:200]
    return bool(sample) and sum(n.startswith("ENS") and n[3:4].isalpha() for n in sample) > len(sample) / 2


def display_names(var: Any, genes: Sequence[str] | None = None, *, gene_symbols_key: str | None = None) -> list[str]:
    """Labels to show for genes: the symbol when ``var`` has one for the gene, else the ``var_name``.

    Parameters
    ----------
    var
        A table's ``var`` (or the AnnData).
    genes
        ``var_names`` to label (default all), e.g. the output of :func:`resolve_genes`.
    gene_symbols_key
        The ``var`` column of symbols (default ``gene_symbol``, then ``gene_symbols``).

    Returns
    -------
    One label per gene.

    Examples
    --------
    >>> import pandas as pd
    >>> from stpredict._genes import display_names
    >>> var = pd.DataFrame({"gene_symbol": ["Pcp4", None]}, index=["ENSMUSG00000090223.1", "ENSMUSG00000020932.2"])
    >>> display_names(var)
    ['Pcp4', 'ENSMUSG00000020932.2']
    """
    v = _var(var)
    genes = [str(g) for g in v.index] if genes is None else [str(g) for g in genes]
    col = symbol_column(v, gene_symbols_key, display=True)
    if col is None:
        return genes
    sym = dict(zip((str(n) for n in v.index), v[col].to_numpy(), strict=True))
    out = []
    for g in genes:
        s = sym.get(g)
        out.append(str(s) if s is not None and not pd.isna(s) and str(s).strip() else g)
    return out
