"""voxseg.planning"""
