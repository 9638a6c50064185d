"""The `sterling` command line: `app.py` registers the command groups."""
