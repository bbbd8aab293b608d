"""voxseg.evaluation"""
