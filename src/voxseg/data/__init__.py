"""voxseg.data"""
