"""The web app: one process serving the JSON API (under /api) and the pages (at /)."""
