"""A self-contained HTML page that shows one replay: the replay's compressed bytes and the viewer code in one
file, with no network, CDN or server needed.

    page = write_viewer_page("replays/ep.json.z")     # replays/ep.html
    python -m metta.mettagrid.replay view replays/ep.json.z

The page decompresses the embedded replay in the browser (``DecompressionStream``) and draws it on a
canvas; its code lives beside this module (``assets/viewer.{html,css,js}``). A replay that fails
validation gets a page that shows the error instead.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import zlib
from functools import lru_cache
from pathlib import Path

from metta.mettagrid.replay.format import (
    REPLAY_SUFFIX,
    ReplayFormatError,
    decode_replay_upgraded,
    write_atomic,
)

ASSETS = Path(__file__).with_name("assets")
_PLACEHOLDER = re.compile(r"__METTA_(TITLE|CSS|JS|ERROR|DATA)__")


@lru_cache(maxsize=1)
def _assets() -> tuple[str, str, str]:
    template = (ASSETS / "viewer.html").read_text(encoding="utf-8")
    css = (ASSETS / "viewer.css").read_text(encoding="utf-8")
    js = (ASSETS / "viewer.js").read_text(encoding="utf-8")
    for name, text in (("viewer.css", css), ("viewer.js", js)):
        if "</script" in text.lower() or "</style" in text.lower():
            raise RuntimeError(f"{ASSETS / name} must not contain a closing script or style tag")
    return template, css, js


def _script_json(value: object) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def viewer_page_html(raw: bytes | None, title: str, error: str | None = None) -> str:
    """The page for the replay bytes ``raw`` (a ``.json.z`` file's content), or one that shows ``error``."""
    template, css, js = _assets()
    parts = {
        "TITLE": html.escape(title),
        "CSS": css,
        "JS": js,
        "ERROR": _script_json(error),
        "DATA": "" if raw is None or error else base64.b64encode(raw).decode("ascii"),
    }
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], template)


def page_path_for(replay_path: str | os.PathLike) -> Path:
    """``.../name.json.z`` -> ``.../name.html``."""
    path = Path(replay_path)
    stem = path.name[: -len(REPLAY_SUFFIX)] if path.name.endswith(REPLAY_SUFFIX) else path.stem
    return path.with_name(stem + ".html")


def build_viewer_page(replay_path: str | os.PathLike) -> tuple[str, str | None]:
    """The page for a replay file and the problem with the file (None when it is valid)."""
    path = Path(replay_path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        return viewer_page_html(None, path.name, f"{path}: cannot read the replay: {err.strerror or err}"), str(err)
    try:
        data, upgraded = decode_replay_upgraded(raw)
    except ReplayFormatError as err:
        message = f"{path}: {err}"
        return viewer_page_html(None, path.name, message), message
    except Exception as err:  # noqa: BLE001 - a hostile file must still get a page that explains
        message = f"{path}: replay: unreadable ({type(err).__name__}: {err})"
        return viewer_page_html(None, path.name, message), message
    if upgraded:
        # A file of an earlier metta: the page carries it in today's shape, which is what the viewer reads.
        raw = zlib.compress(json.dumps(data, separators=(",", ":")).encode("utf-8"))
    label = (data.get("env_config") or {}).get("label") or ""
    return viewer_page_html(raw, f"{label} · {path.name}" if label else path.name), None


def write_viewer_page(replay_path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Write the viewer page of a replay (default: beside it, ``name.html``) and return its path.

    A replay that fails validation still gets a page, one that shows what is wrong; call ``read_replay``
    first to fail instead.
    """
    page, _ = build_viewer_page(replay_path)
    return write_atomic(page_path_for(replay_path) if out_path is None else Path(out_path), page.encode("utf-8"))
