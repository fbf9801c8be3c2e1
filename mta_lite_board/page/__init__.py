"""page — the box's status page: its own small, read-only HTTP process (mta-lite-page).

    data     the files it reads (status, history, the board's clock report) -> one plain dict,
             the body of /status.json and what the HTML shows
    svg      the history plots as inline SVG (pure)
    render   the HTML page (pure; every value escaped)
    server   asyncio HTTP server, limits, privilege drop, the command line
"""
