"""Figures and the HTML/Markdown report, built from results on disk (no torch)."""
