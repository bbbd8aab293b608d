"""voxseg: self-configuring medical image segmentation (nnU-Net's data semantics, faster)."""

__version__ = "0.1.0"
