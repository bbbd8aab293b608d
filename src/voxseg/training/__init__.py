"""voxseg.training"""
