"""voxseg.losses"""
