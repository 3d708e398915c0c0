"""The shared tuspyserver peer app (../shared/peers/tuspyserver_app.py) behind FastAPI's
CORSMiddleware, as a site serving browsers would run it: for `bench.tus --browser`.

`uvicorn tuspyserver_cors_app:app`, from the directory the peer scripts are copied into.
"""

from fastapi.middleware.cors import CORSMiddleware
from tuspyserver_app import app  # type: ignore[import-not-found]

TUS_HEADERS = [
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Expires",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
]

app.add_middleware(
    CORSMiddleware,
    allow_origins=["*"],
    allow_methods=["*"],
    allow_headers=["*"],
    expose_headers=TUS_HEADERS,
)
