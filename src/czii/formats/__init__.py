"""File formats, one module each, with readers and writers that name the file in every error.

- :mod:`czii.formats.omezarr`: OME-Zarr v0.4 tomograms (the CZII layout; spacing from ``scale``).
- :mod:`czii.formats.mrc`: MRC/REC tomograms (``mrcfile``, memory-mapped; spacing from the header).
- :mod:`czii.formats.tomogram`: one entry point over both (``open_tomogram``), with the voxel size checks.
- :mod:`czii.formats.picks_json`: copick picks documents (x, y, z in Å).
- :mod:`czii.formats.exports`: picks tables ↔ RELION 5 / RELION 4 (Warp) STAR, Dynamo ``.tbl`` and CSV.

Nothing here imports copick or torch.
"""
