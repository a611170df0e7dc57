"""The patches around spots as a dataset for torch: :class:`PatchDataset` and :func:`patches`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._docs import doc_params
from .._image import image_levels
from ._patches import PatchExtractor

if TYPE_CHECKING:
    import numpy as np
    from spatialdata import SpatialData

    from ._spots import SpotGeometry

__all__ = ["PatchDataset", "patches"]


class PatchDataset:
    """A map-style dataset of patches for :class:`torch.utils.data.DataLoader`.

    With ``batch_size=None`` each item is one patch ``(3, P, P)`` uint8; with a ``batch_size`` each item is a
    spatially coherent batch ``(indices, patches)``, which reads chunks once per batch — use it with
    ``DataLoader(dataset, batch_size=None, num_workers=...)``.

    Parameters
    ----------
    extractor
        The reader of the windows: their centres, size in µm, output size ``P`` (its ``patch_px``) and the
        pyramid level read.
    batch_size
        ``None``: item ``i`` is the patch around centre ``i``, and the length is the number of centres.
        Otherwise item ``i`` is the ``i``-th batch of up to ``batch_size`` windows in the extractor's spatial
        order (:meth:`PatchExtractor.spatial_order`): a tuple of their int64 indices into the centres and
        their ``(b, 3, P, P)`` uint8 patches; the length is the number of batches.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> ds = stp.pp.patches(sdata, size_um=56, patch_px=112, batch_size=8)
    >>> idx, batch = ds[0]
    >>> batch.shape[1:]
    (3, 112, 112)
    """

    def __init__(self, extractor: PatchExtractor, *, batch_size: int | None = None) -> None:
        self.extractor = extractor
        self.batch_size = batch_size
        if batch_size is not None:
            order = extractor.spatial_order()
            self._batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

    def __len__(self) -> int:
        return len(self._batches) if self.batch_size is not None else len(self.extractor)

    def __getitem__(self, i: int) -> Any:
        if self.batch_size is not None:
            idx = self._batches[i]
            return idx, self.extractor.read(idx)
        return self.extractor.read([i])[0]


@doc_params()
def patches(
    sdata: SpatialData,
    centers: np.ndarray | None = None,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    microns_per_pixel: float | None = None,
    size_um: float = 112.0,
    patch_px: int = 224,
    batch_size: int | None = None,
    geometry: SpotGeometry | None = None,
) -> PatchDataset:
    """Patches of ``size_um`` around the spots (or any ``centers``), as a lazy dataset.

    Parameters
    ----------
    {sdata}
    centers
        ``(n, 2)`` window centres (x, y) in level-0 pixels of the image; ``None`` uses the spots' centres.
    {keys}
    {mpp}
    size_um
        Window side in µm (default 112 µm, as HEST and HisToSGE use).
    patch_px
        Output side in pixels (default 224, i.e. 0.5 µm/px for 112 µm).
    batch_size
        ``None``: items are single patches; otherwise items are spatially coherent batches.
    geometry
        A resolved :class:`SpotGeometry` to reuse.

    Returns
    -------
    A :class:`PatchDataset`; its ``extractor`` says which pyramid level is read and the padded fractions.

    Examples
    --------
    >>> import stpredict as stp
    >>> sdata = stp.datasets.synthetic(image_size=512, n_genes=5, seed=0)
    >>> ds = stp.pp.patches(sdata, size_um=56, patch_px=112)
    >>> ds[0].shape
    (3, 112, 112)
    """
    from ._spots import spots

    geo = geometry or spots(
        sdata, image_key=image_key, spots_key=spots_key, table_key=table_key, microns_per_pixel=microns_per_pixel
    )
    levels = image_levels(sdata.images[geo.image_key])
    ext = PatchExtractor(
        levels,
        geo.centers if centers is None else centers,
        geo.microns_per_pixel_xy,
        size_um=size_um,
        patch_px=patch_px,
    )
    return PatchDataset(ext, batch_size=batch_size)
