"""The shared tuspyserver peer app (../shared/peers/tuspyserver_app.py) behind FastAPI's
CORSMiddleware, as a site serving browsers would run it: for `bench.tus --browser`.

`uvicorn tuspyserver_cors_app:app`, from the directory the peer scripts are copied into.
Every response header is exposed (`*`: tus-js-client's requests carry no cookies, so the
wildcard applies), which covers Location, Upload-Offset and the other tus headers.
"""

from fastapi.middleware.cors import CORSMiddleware
from tuspyserver_app import app  # type: ignore[import-not-found]

app.add_middleware(
    CORSMiddleware,
    allow_origins=["*"],
    allow_methods=["*"],
    allow_headers=["*"],
    expose_headers=["*"],
)
