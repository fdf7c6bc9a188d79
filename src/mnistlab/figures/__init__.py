"""Every figure the studies write, drawn from plain arrays and result files (numpy and
matplotlib; no torch): one place for the look of the report's images."""
