"""Server-rendered web pages with a little JavaScript."""
