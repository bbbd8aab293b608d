"""voxseg.inference"""
