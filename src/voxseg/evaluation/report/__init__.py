"""`voxseg report`: one self-contained HTML page (page.py) with figures (figures.py) and report.css."""

from voxseg.evaluation.report.page import build_report, discover

__all__ = ["build_report", "discover"]
