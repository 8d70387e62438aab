"""Command-line programs shipped with gear (see ``geard``)."""
