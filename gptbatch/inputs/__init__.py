"""Request files -> Requests: validation, content keys, token counts, the parallel scan."""
