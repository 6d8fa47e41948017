"""Every table and figure of the analysis, one small script each; `make figures` rebuilds them all.

See `manifest.py` for the list, `core.py` for inputs/provenance, `style.py` for the look.
"""
