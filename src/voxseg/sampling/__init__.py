"""voxseg.sampling"""
