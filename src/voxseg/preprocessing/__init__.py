"""voxseg.preprocessing"""
