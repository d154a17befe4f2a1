"""One module per measurement; each returns a plain dict for the JSON document."""
