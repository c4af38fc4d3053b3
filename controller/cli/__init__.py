"""Command line: `ds01` for admins and developers, `kubectl ds01` for users."""
