"""Workflows that span stages (train, then validate with the predictor; cascades).

Stage packages import only earlier stages; what needs both training and inference lives here.
"""
