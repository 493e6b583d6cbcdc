"""One module per page: each has ``render(app, q)`` returning the page's HTML (and, where a page updates
live, ``fragment(app, q)`` returning the part that is polled)."""
