"""``stpredict._genes``: user gene names (ids, versionless ids, symbols) onto a table's ``var_names``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stpredict._genes import display_names, resolve_genes, strip_version, symbol_column

IDS = ["ENSMUSG00000090223.1", "ENSMUSG00000020932.2", "ENSMUSG00000041607.17", "ENSMUSG00000000001.4"]


@pytest.fixture
def var():
    """Versioned Ensembl ids with spatialdata-io's ``gene_symbol`` column (one symbol missing)."""
    return pd.DataFrame({"gene_symbol": ["Pcp4", "Gfap", "Mbp", None]}, index=IDS)


def test_exact_names_first(var):
    assert resolve_genes(var, IDS[::-1]) == IDS[::-1]
    assert resolve_genes(var, IDS[0]) == [IDS[0]]  # one name, not its characters


def test_version_suffixes_stripped_on_both_sides():
    v = pd.DataFrame(index=["ENSMUSG00000090223.1", "ENSMUSG00000020932"])
    assert resolve_genes(v, ["ENSMUSG00000090223"]) == ["ENSMUSG00000090223.1"]
    assert resolve_genes(v, ["ENSMUSG00000020932.5"]) == ["ENSMUSG00000020932"]
    assert strip_version("ENSG00000002586.20_PAR_Y") == "ENSG00000002586_PAR_Y"
    assert strip_version("Pcp4.1") == "Pcp4.1"  # only Ensembl ids carry versions


def test_symbols_then_case_insensitive(var):
    assert resolve_genes(var, ["Gfap", "Pcp4"]) == [IDS[1], IDS[0]]
    assert resolve_genes(var, ["GFAP", "mbp"]) == [IDS[1], IDS[2]]
    # an exact match wins over a case-insensitive one
    v = pd.DataFrame({"gene_symbol": ["A", "a"]}, index=["ENSG00000000001.1", "ENSG00000000002.1"])
    assert resolve_genes(v, ["a"]) == ["ENSG00000000002.1"]


def test_case_insensitive_only_when_unambiguous():
    v = pd.DataFrame({"gene_symbol": ["Abc", "ABC"]}, index=["ENSG00000000001.1", "ENSG00000000002.1"])
    with pytest.raises(KeyError, match=r"'abc' names 2 genes"):
        resolve_genes(v, ["abc"])
    # a symbol shared by two ids is ambiguous too
    v = pd.DataFrame({"gene_symbol": ["Dup", "Dup"]}, index=["ENSG00000000001.1", "ENSG00000000002.1"])
    with pytest.raises(KeyError, match="Ambiguous"):
        resolve_genes(v, ["Dup"])
    assert resolve_genes(v, ["ENSG00000000002"]) == ["ENSG00000000002.1"]


@pytest.mark.parametrize("column", ["gene_symbols", "gene_ids"])
def test_other_symbol_columns(column):
    if column == "gene_ids":  # scanpy's 10x readers: var_names are symbols, gene_ids the ids
        v = pd.DataFrame({"gene_ids": IDS[:2]}, index=["Pcp4", "Gfap"])
        assert resolve_genes(v, ["ENSMUSG00000020932"]) == ["Gfap"]
        assert resolve_genes(v, [IDS[0]]) == ["Pcp4"]
        assert display_names(v) == ["Pcp4", "Gfap"]  # ids never replace a name in a plot
    else:
        v = pd.DataFrame({column: ["Pcp4", "Gfap"]}, index=IDS[:2])
        assert resolve_genes(v, ["Gfap"]) == [IDS[1]]
        assert display_names(v) == ["Pcp4", "Gfap"]


def test_user_named_column(var):
    var["name"] = ["a1", "a2", "a3", "a4"]
    assert resolve_genes(var, ["a3"], gene_symbols_key="name") == [IDS[2]]
    assert display_names(var, [IDS[3]], gene_symbols_key="name") == ["a4"]
    with pytest.raises(KeyError, match="gene_symbols_key='nope' is not a var column"):
        resolve_genes(var, ["a3"], gene_symbols_key="nope")
    assert symbol_column(var) == "gene_symbol"
    assert symbol_column(pd.DataFrame(index=IDS)) is None


def test_unknown_names_close_matches_and_symbol_hint(var):
    with pytest.raises(KeyError, match=r"'Pcp5' \(did you mean 'Pcp4'\?\)") as e:
        resolve_genes(var, ["Gfap", "Pcp5"], what="table 'table'")
    assert "not in table 'table'" in str(e.value)
    # without a symbol column, the message says how to add one
    with pytest.raises(KeyError, match=r"no column of gene symbols.*var\['gene_symbol'\] = "):
        resolve_genes(pd.DataFrame(index=IDS), ["Pcp4"])
    with pytest.raises(KeyError, match=r"ENSMUSG00000090224.*did you mean 'ENSMUSG00000090223\.1'"):
        resolve_genes(pd.DataFrame(index=IDS), ["ENSMUSG00000090224"])


def test_display_names_and_anndata(var):
    adata = ad.AnnData(np.zeros((2, 4)), var=var)
    assert display_names(adata) == ["Pcp4", "Gfap", "Mbp", IDS[3]]  # no symbol: the id
    assert display_names(pd.DataFrame(index=IDS), IDS[:2]) == IDS[:2]
    assert resolve_genes(adata, ["Mbp"]) == [IDS[2]]
    with pytest.raises(TypeError, match="var DataFrame or an AnnData"):
        resolve_genes(["Pcp4"], ["Pcp4"])


def test_verbs_take_symbols_and_versionless_ids():
    """predict(genes=) and evaluate(genes=) accept what a biologist types: symbols and ids without a version."""
    import stpredict as stp

    sdata = stp.datasets.synthetic(image_size=700, n_genes=6, seed=0)
    table = sdata.tables["table"]
    ids = [f"ENSMUSG0000000000{i}.1" for i in range(table.n_vars)]
    table.var_names = ids
    table.var["gene_symbol"] = [f"Sym{i}" for i in range(table.n_vars)]
    stp.tl.predict(sdata, "ridge", genes=["Sym1", "ENSMUSG00000000003", ids[4]], oof_folds=2, progress=False)
    assert list(table.uns["stpredict"]["predicted"]["genes"]) == [ids[1], ids[3], ids[4]]
    scores = stp.tl.evaluate(sdata, genes=["sym3", "Sym1"])
    assert list(scores.index) == [ids[3], ids[1]]
    assert list(stp.tl.evaluate(sdata, genes="Sym4").index) == [ids[4]]  # one name, not its letters
    with pytest.raises(KeyError, match="not predicted"):
        stp.tl.evaluate(sdata, genes=["Sym2"])  # measured, but not in the predicted panel
    with pytest.raises(ValueError, match="more than once"):
        stp.tl.predict(sdata, "ridge", genes=["Sym1", ids[1]], oof_folds=2, progress=False)
