"""napari-noisyseg: find and fix wrong segmentation annotations."""

__version__ = "0.1.0"
