"""difaug: offline ControlNet data augmentation for few-shot semantic segmentation (after DifFSS)."""

__version__ = "0.1.0"
