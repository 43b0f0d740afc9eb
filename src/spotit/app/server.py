"""The routes of `spotit serve`: the web page at `/`, the JSON API under `/api`, its OpenAPI page at `/docs`.

Every asset is served from the installed package, so the page and the docs work offline."""

from __future__ import annotations

import json
import math
from contextlib import asynccontextmanager
from importlib.resources import files
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from ..errors import BackendError, SpotitError
from ..images import ImageError
from .guard import Guard
from .service import Busy, NotFound, Service

STATIC = files("spotit.app") / "static"
MAX_TOP = 1000
MAX_BOXES = 20  # each box is a search of its own: a request must not hold the cores for minutes
DEFAULT_MAX_UPLOAD = 25 * 2**20


def parse_boxes(text: str | None, photos: int = 1) -> list[list[list[float]]]:
    """The `boxes` form field, checked: JSON `[[x, y, w, h], ...]` for one photo, `[[[x, y, w, h], ...], ...]`
    (a list per photo) for several. Returns each photo's boxes; HTTPException 422 with the reason."""
    if text is None or not text.strip():
        return [[] for _ in range(photos)]
    try:
        boxes = json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HTTPException(422, f"boxes is not JSON ({reason}); send [[x, y, w, h], ...] in the photo's pixels")
    if not isinstance(boxes, list):
        raise HTTPException(422, "boxes must be a list of [x, y, w, h] boxes, e.g. [[120, 80, 200, 160]]")
    if photos == 1:
        per_photo = [boxes]
    elif len(boxes) != photos or not all(isinstance(entry, list) for entry in boxes):
        raise HTTPException(422, f"{photos} photos: boxes must hold a list of boxes per photo, "
                                 f"e.g. [[[120, 80, 200, 160]], []] ([] for a whole photo)")
    else:
        per_photo = boxes
    flat = [box for entry in per_photo for box in entry]
    if len(flat) + sum(not entry for entry in per_photo) > MAX_BOXES:
        raise HTTPException(422, f"{len(flat)} boxes: at most {MAX_BOXES} per search")
    check_boxes(flat)
    return per_photo


def check_boxes(boxes: list) -> None:
    for i, box in enumerate(boxes, 1):
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise HTTPException(422, f"box {i} is {json.dumps(box)}: each box must be four numbers [x, y, w, h]")
        if box[2] <= 0 or box[3] <= 0:
            raise HTTPException(422, f"box {i} is {json.dumps(box)}: its width and height must be above 0")


def photo_urls(service: Service, photo_id: str) -> dict:
    """Where a result's photo and thumbnail are served; null URLs and the reason when it is not served."""
    try:
        service.photo_path(photo_id)
    except NotFound as exc:
        return {"thumbnail_url": None, "image_url": None, "unavailable": str(exc)}
    path = quote(photo_id, safe="/")
    return {"thumbnail_url": f"/api/thumbnails/{path}", "image_url": f"/api/images/{path}"}


def create_app(service: Service, token: str | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               loopback_only: bool = True) -> FastAPI:
    """The ASGI app serving `service`. With `token`, every request must carry it; without one and with
    `loopback_only`, only requests addressed to localhost are answered. Bodies over `max_upload` bytes get 413."""

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.stop()  # an update commits the photos it finished

    app = FastAPI(title="spotit", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Instance search: the gallery photos that show the object in a query photo, best "
                              "first, with where it lies in each. The web page is at `/`.")
    # swagger-ui's offline bundle (4.x) reads OpenAPI 3.0 documents; FastAPI's are 3.1 but use nothing
    # the page cannot show
    app.openapi_version = "3.0.3"
    app.add_middleware(Guard, token=token, max_body=max_upload, loopback_only=loopback_only)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.exception_handler(SpotitError)
    async def spotit_error(request: Request, exc: SpotitError):
        status = 400 if isinstance(exc, ImageError) else 404 if isinstance(exc, NotFound) else \
            409 if isinstance(exc, Busy) else 503 if isinstance(exc, BackendError) else 422
        return JSONResponse({"detail": str(exc)}, status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        reasons = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(reasons)}, 422)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="spotit API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/icon.svg")

    @app.post("/api/search", summary="Rank the gallery for a query photo, or several photos of one object",
              description="Multipart form: the query photo in `image` (EXIF orientation honoured; repeat `image` "
                          "for several photos of one object), and optionally `boxes` (JSON `[[x, y, w, h], ...]` in "
                          "the upright photo's pixels; several boxes mean several instances; with several photos, a "
                          "list of boxes per photo), `top`, `method`, `matches` (yes, or maybe: yes and maybe), "
                          "`under` (a gallery folder), `since` and `until` (dates taken). Returns what "
                          "`spotit search --json` prints: each result has its verdict (`match`, `confidence`), "
                          "`width`, `height` and the URLs of its thumbnail and photo. A verified result's `box` and "
                          "`quad` say where the object lies in that photo.")
    def search(image: list[UploadFile] = File(description="the query photo (repeat it for several photos)"),
               boxes: str | None = Form(None, description="JSON [[x, y, w, h], ...]; none: the whole photo"),
               top: int = Form(10, ge=1, le=MAX_TOP, description="how many results"),
               method: str | None = Form(None, description="hybrid, regional, cnn or sift (default: the index's)"),
               matches: str | None = Form(None, description="only these verdicts: yes, or maybe (yes and maybe)"),
               under: str | None = Form(None, description="search only this folder of the gallery"),
               since: str | None = Form(None, description="only photos taken on or after this date (2024-06-01)"),
               until: str | None = Form(None, description="only photos taken on or before this date")):
        if len(image) > MAX_BOXES:
            raise HTTPException(422, f"{len(image)} photos: at most {MAX_BOXES} per search")
        parsed = parse_boxes(boxes, len(image))
        options = {"matches": (matches or "").strip().lower() or None, "under": under or None,
                   "since": since or None, "until": until or None}
        answer = service.search([(upload.file.read(), upload.filename or "upload") for upload in image], parsed,
                                (method or "").strip().lower() or None, top, **options)
        for result in answer["results"]:
            result.update(photo_urls(service, result["id"]))
        return answer

    @app.post("/api/preview", summary="A query photo as the server reads it (JPEG, upright)",
              description="For photos a browser cannot show (HEIC, camera raw): the photo as spotit decodes it, at "
                          "most 2048 pixels on its longer side. `X-Photo-Width` and `X-Photo-Height` give its full "
                          "size, in which boxes are drawn.")
    def preview(image: UploadFile = File(description="the query photo")):
        data, width, height = service.preview(image.file.read(), image.filename or "upload")
        return Response(data, media_type="image/jpeg", headers={"X-Photo-Width": str(width), "X-Photo-Height": str(height),
                                                                "Cache-Control": "no-store"})

    def photo_response(request: Request, photo_id: str, max_side: int | None) -> Response:
        data, etag = service.photo(photo_id, max_side)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/images/{photo_id:path}", summary="A gallery photo, upright (JPEG)",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such photo"}})
    def image(request: Request, photo_id: str):
        return photo_response(request, photo_id, None)

    @app.get("/api/thumbnails/{photo_id:path}", summary="A gallery photo's thumbnail, upright (JPEG)",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such photo"}})
    def thumbnail(request: Request, photo_id: str,
                  size: int = Query(256, ge=16, le=1024, description="longer side in pixels")):
        return photo_response(request, photo_id, size)

    @app.get("/api/status", summary="What the index holds, and the progress of a running update")
    def status():
        return service.status()

    @app.post("/api/index", status_code=202, summary="Start updating the index from its gallery",
              description="Extracts new and changed photos and drops deleted ones, in the background; searches go "
                          "on meanwhile. Its progress shows in `/api/status`. 409 while an update runs.")
    def update():
        service.update.start()
        return service.status()

    return app
