"""StatsLogger: the metrics file always, console lines, resumed runs append."""

from __future__ import annotations

import errno
import io
import json
import math

import pytest

from metta.common.fs import WriteError
from metta.common.stats_logger import StatsLogger, format_duration


def test_metrics_file_console_and_append(tmp_path):
    out = io.StringIO()
    logger = StatsLogger(tmp_path, total_timesteps=1000, stream=out)
    logger.log(
        1,
        100,
        {"overview/sps": 1234.5, "overview/reward": 0.5, "losses/entropy": 2.0, "timing/frac/env": 0.25, "x": math.nan},
    )
    logger.close()
    logger = StatsLogger(tmp_path, total_timesteps=1000, stream=out, console=False)
    logger.log(2, 200, {"overview/reward": 0.75})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["x"] is None and rows[1]["overview/reward"] == 0.75
    line = out.getvalue().strip()
    assert "epoch     1" in line and "sps 1,234" in line and "reward 0.5000" in line and "env 25%" in line
    assert "|" not in line  # no progress bar when the stream is not a terminal
    assert " elapsed 0s" in line and " eta " in line  # elapsed, and the time left at this run's rate


def test_epoch_line_eta_needs_a_total_and_steps_since_the_start(tmp_path):
    out = io.StringIO()
    logger = StatsLogger(tmp_path, stream=out)  # no total: no ETA
    logger.log(1, 100, {})
    logger.close()
    logger = StatsLogger(tmp_path, total_timesteps=1000, stream=out, start_agent_step=100)
    logger.log(2, 100, {})  # no step since this logger started: no rate yet
    logger.close()
    assert all(" elapsed " in line and " eta " not in line for line in out.getvalue().splitlines())


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_tensorboard_scalars_are_written_per_agent_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = StatsLogger(tmp_path, console=False, tensorboard=True)
    logger.log(1, 100, {"overview/reward": 0.5, "losses/entropy": 2.0, "note": "text is skipped", "flag": True})
    logger.log(2, 200, {"overview/reward": 0.75, "losses/entropy": 1.5})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"overview/reward", "losses/entropy", "epoch", "agent_step"} <= tags
    assert "note" not in tags and "flag" not in tags
    rewards = events.Scalars("overview/reward")
    assert [(e.step, e.value) for e in rewards] == [(100, 0.5), (200, 0.75)]


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path):
    logger = StatsLogger(tmp_path, console=False)
    for epoch in range(1, 6):
        logger.log(epoch, epoch * 100, {"overview/reward": float(epoch)})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 6, "agent_st')  # the torn row of a killed write
    logger = StatsLogger(tmp_path, console=False, resume_epoch=3)  # resumed from epoch 3's checkpoint
    logger.log(4, 400, {"overview/reward": 4.5})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and rows[-1]["overview/reward"] == 4.5
    StatsLogger(tmp_path, console=False, resume_epoch=0).close()  # a fresh start keeps no row
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="resume_epoch=-1 must be an int >= 0"):
        StatsLogger(tmp_path, console=False, resume_epoch=-1)


def test_damage_is_reported_as_what_it_is_and_lost_epochs_are_named(tmp_path, caplog):
    rows = [json.dumps({"epoch": e, "agent_step": e * 100}) for e in range(1, 8)]
    lines = [rows[0], rows[1], "\x00\x00garbage\x00", rows[3], '{"epoch": 5, "agent_st#$%', rows[5], "[1, 2]", rows[6]]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"epoch": 8, "agen')  # and a torn last line
    with caplog.at_level("INFO", logger="metta.common.stats_logger"):
        StatsLogger(tmp_path, console=False, resume_epoch=6).close()
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 4, 6]
    text = caplog.text
    assert "dropped 1 row(s) logged after epoch 6" in text  # epoch 7: about to be trained again
    assert 'dropped the torn last line (a write cut short, e.g. by a kill): \'{"epoch": 8, "agen\'' in text
    assert "line 3 is not a metrics row, dropped: '\\x00\\x00garbage\\x00'" in text
    assert "line 5 is not a metrics row" in text and "line 7 is not a metrics row, dropped: '[1, 2]'" in text
    assert "lacks the rows of the epochs after 2 and before 4; epoch 5 (up to epoch 6" in text
    assert [r.levelname for r in caplog.records if "torn" in r.message] == ["INFO"]
    assert {r.levelname for r in caplog.records if "not a metrics row" in r.message or "lacks" in r.message} == {
        "WARNING"
    }


def test_a_file_that_ends_before_the_checkpoint_names_the_missing_epochs(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)))
    with caplog.at_level("INFO", logger="metta.common.stats_logger"):
        StatsLogger(tmp_path, console=False, resume_epoch=5).close()
    assert "lacks the rows of the epochs after 3 (up to epoch 5" in caplog.text


def test_a_metrics_file_that_cannot_be_written_is_an_error_naming_it(tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()
    for resume_epoch in (None, 3):
        with pytest.raises(WriteError, match=r"cannot write .*metrics.jsonl: a directory has that name") as err:
            StatsLogger(tmp_path, console=False, resume_epoch=resume_epoch)
        assert err.value.errno == errno.EISDIR and err.value.filename == str(tmp_path / "metrics.jsonl")
