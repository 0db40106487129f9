"""msa2net: MSA2Net for 2D medical image segmentation."""
__version__ = "0.1.0"
