"""spotit over HTTP (`spotit serve`): the web page and the JSON API.

    service.py  what the routes do: search an upload, serve gallery photos by id, run an update
    guard.py    what every request must pass: token, Host, body size
    server.py   the FastAPI routes and the OpenAPI page
    load.py     a bounded load test against a running server
    static/     the page: plain HTML, CSS and JavaScript, no build step
"""

from .server import create_app
from .service import Service

__all__ = ["create_app", "Service"]
