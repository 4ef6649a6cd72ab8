"""Reports: one self-contained HTML page (plots embedded) plus JSON, for a search result."""

from quantbalance.report.html import histograms, render, write_report

__all__ = ["histograms", "render", "write_report"]
