"""In memory, all or nothing: ``predict`` and ``superresolve`` interrupted at any point leave the SpatialData as it was.

Both verbs build every result first and change the object in one final step (:class:`stpredict.tl._commit.Staged`),
undone whole if anything interrupts it. A ``KeyboardInterrupt`` is raised late in the verb (results built, nothing
applied) and at every step of the final commit, before and after that step's assignment.
"""

from __future__ import annotations

import pytest
from _sdata_compare import assert_same_sdata
from spatialdata import deepcopy

import stpredict as stp
from stpredict.tl._commit import Staged

P = {"progress": False}


@pytest.fixture(scope="module")
def small():
    return stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)


class _Interrupting:
    """A mapping that raises KeyboardInterrupt on its first write (``after``: once the write is made)."""

    def __init__(self, inner, *, after: bool) -> None:
        self.inner, self.after, self.fired = inner, after, False

    def __contains__(self, key):
        return key in self.inner

    def __getitem__(self, key):
        return self.inner[key]

    def _fire(self):
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt

    def __setitem__(self, key, value):
        if self.fired or self.after:
            self.inner[key] = value
        self._fire()

    def __delitem__(self, key):
        if self.fired or self.after:
            del self.inner[key]
        self._fire()


def _interrupt_at(monkeypatch, step: int, *, after: bool) -> list[int]:
    """Make the ``step``-th staged change of the next commit interrupt it; returns [number of staged changes]."""
    seen: list[int] = []
    original = Staged.apply

    def apply(self):
        seen.append(len(self._ops))
        if step < len(self._ops):
            mapping, key, value = self._ops[step]
            self._ops[step] = (_Interrupting(mapping, after=after), key, value)
        return original(self)

    monkeypatch.setattr(Staged, "apply", apply)
    return seen


def test_staged_undoes_what_it_applied():
    d = {"a": 1, "uns": {"keep": 0}}
    s = Staged()
    s.set(d, "a", 2)
    s.delete(d, "missing")
    s.set_in(d["uns"], ("stpredict", "embeddings", "X_h"), 5)
    s.set_in(d["uns"], ("stpredict", "predicted"), 6)  # the same new "stpredict" dict, not a second one
    s.set(d, "b", 3)
    s.apply()
    assert d == {"a": 2, "uns": {"keep": 0, "stpredict": {"embeddings": {"X_h": 5}, "predicted": 6}}, "b": 3}
    d = {"a": 1, "uns": {"keep": 0}}
    s = Staged()
    s.set(d, "a", 2)
    s.set_in(d["uns"], ("stpredict", "predicted"), 6)
    s.set(_Interrupting(d, after=True), "b", 3)
    with pytest.raises(KeyboardInterrupt):
        s.apply()
    assert d == {"a": 1, "uns": {"keep": 0}}


@pytest.mark.parametrize("fitted", [False, True], ids=["by name", "fitted model"])
def test_predict_interrupted_before_the_commit(small, monkeypatch, fitted):
    sdata = deepcopy(small)
    model = stp.tl.fit(deepcopy(small), "ridge", **P) if fitted else "ridge"
    stp.tl.predict(sdata, "mean", key_added="predicted", **P)  # an earlier result under the same name
    before = deepcopy(sdata)

    def late(*a, **k):  # called once the predictions are made, before anything is written
        raise KeyboardInterrupt

    monkeypatch.setattr("stpredict.tl._predict.uns_safe", late)
    with pytest.raises(KeyboardInterrupt):
        stp.tl.predict(sdata, model, **P)
    assert_same_sdata(sdata, before)


def test_predict_interrupted_while_logging_what_it_adds(small, monkeypatch):
    """The log line naming the added layers comes before the one write (the old code logged after writing them)."""
    from stpredict.tl import _predict

    sdata = deepcopy(small)
    before = deepcopy(sdata)
    info = _predict.logger.info

    def interrupting(msg, *args, **kw):
        if msg.startswith(("Add", "Adding")):
            raise KeyboardInterrupt
        return info(msg, *args, **kw)

    monkeypatch.setattr(_predict.logger, "info", interrupting)
    with pytest.raises(KeyboardInterrupt):
        stp.tl.predict(sdata, "ridge", oof_folds=2, **P)
    assert_same_sdata(sdata, before)


def test_predict_interrupted_at_every_step_of_the_commit(small, monkeypatch):
    sdata = deepcopy(small)
    before = deepcopy(sdata)
    step, n = 0, None
    while n is None or step < n:
        for after in (False, True):
            with monkeypatch.context() as m:
                seen = _interrupt_at(m, step, after=after)
                with pytest.raises(KeyboardInterrupt):
                    stp.tl.predict(sdata, "ridge", oof_folds=2, **P)
            n = seen[0]
            assert_same_sdata(sdata, before)
        step += 1
    assert n >= 6  # layers, var, obsm, uns record, embeddings and their record
    stp.tl.predict(sdata, "ridge", oof_folds=2, **P)  # uninterrupted: everything is written
    t = sdata.tables["table"]
    assert {"predicted", "predicted_std"} <= set(t.layers) and "X_handcrafted" in t.obsm
    assert {"predicted", "embeddings"} <= set(t.uns["stpredict"])


@pytest.mark.parametrize("where", ["before", "same_geometry", "step 0", "step 0 after", "step 1", "step 1 after"])
def test_superresolve_interrupted_keeps_the_earlier_result(small, monkeypatch, where):
    sdata = deepcopy(small)
    stp.tl.superresolve(sdata, "ridge", grid="ps4", **P)  # tissue detected
    before = deepcopy(sdata)
    if where == "before":

        def late(*a, **k):  # the table is built, the grid's shapes too; nothing is written yet
            raise KeyboardInterrupt

        monkeypatch.setattr("stpredict.tl._superresolve.uns_safe", late)
        seen = None
    elif where == "same_geometry":  # compares the old grid with the new one (the old code had deleted the table)

        def late(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr("stpredict.tl._superresolve.same_geometry", late)
        seen = None
    else:
        seen = _interrupt_at(monkeypatch, int(where.split()[1]), after=where.endswith("after"))
    with pytest.raises(KeyboardInterrupt):
        # no tissue mask: a different grid under the same names, so both the shapes and the table are replaced
        stp.tl.superresolve(sdata, "ridge", grid="ps4", tissue=False, **P)
    if seen is not None:
        assert seen == [2]  # the shapes and the table
    assert_same_sdata(sdata, before)
