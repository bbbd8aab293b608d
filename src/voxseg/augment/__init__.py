"""voxseg.augment"""
