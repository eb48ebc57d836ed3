"""Episode replays: one zlib-compressed JSON file per episode (format v2, docs/replay_format.md), and a viewer.

    writer = ReplayWriter(replay_dir)          # record: start_episode / log_step / end_episode
    data = read_replay(path)                   # read and check a .json.z file
    page = write_viewer_page(path)             # a self-contained HTML page beside it

``python -m metta.mettagrid.replay view PATH.json.z`` writes the page and opens it in a browser.
"""

from __future__ import annotations

from metta.mettagrid.replay.format import (
    ALLOWED_TOP_KEYS,
    ORIENTATION_NAMES,
    REPLAY_SUFFIX,
    REPLAY_VERSION,
    ReplayFormatError,
    decode_replay,
    default_value,
    expand_object,
    expand_series,
    is_series,
    pairs_to_counts,
    read_replay,
    replay_metadata,
    upgrade_replay,
    validate_replay,
)
from metta.mettagrid.replay.viewer import viewer_page_html, write_viewer_page
from metta.mettagrid.replay.writer import ReplayWriter

__all__ = [
    "ALLOWED_TOP_KEYS",
    "ORIENTATION_NAMES",
    "REPLAY_SUFFIX",
    "REPLAY_VERSION",
    "ReplayFormatError",
    "ReplayWriter",
    "decode_replay",
    "default_value",
    "expand_object",
    "expand_series",
    "is_series",
    "pairs_to_counts",
    "read_replay",
    "replay_metadata",
    "upgrade_replay",
    "validate_replay",
    "viewer_page_html",
    "write_viewer_page",
]
