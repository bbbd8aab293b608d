"""voxseg.cli"""
