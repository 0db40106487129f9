"""Data: image I/O with geometry, dataset preparation, datasets and synthetic phantoms.

Submodules (import them directly; this package imports nothing heavy on its own):

- ``msa2net.data.io``: read/write NIfTI, NRRD, MetaImage, DICOM series and 2D rasters with spacing/origin/direction.
- ``msa2net.data.synapse``: Synapse multi-organ CT (BTCV) preparation in the TransUNet layout, and datasets.
- ``msa2net.data.isic``: ISIC 2018 task 1 preparation and dataset.
- ``msa2net.data.phantom``: deterministic synthetic stand-ins for both raw releases, for tests and smoke runs.
"""
