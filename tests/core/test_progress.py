"""edgeq.core.progress: plain lines off a terminal, rich displays on one, nesting that degrades instead of failing."""
from __future__ import annotations

import re
from io import StringIO

import pytest
from rich.console import Console

from edgeq.core import progress


@pytest.fixture
def plain(monkeypatch):
    monkeypatch.setenv("EDGEQ_PROGRESS", "plain")


@pytest.fixture
def rich_terminal(monkeypatch):
    """Rich mode drawing into a fake terminal; returns the buffer."""
    buf = StringIO()
    monkeypatch.setenv("EDGEQ_PROGRESS", "rich")
    monkeypatch.setattr(progress, "console", Console(force_terminal=True, file=buf, width=100))
    return buf


def test_log_prints_one_line_without_markup(plain, capsys):
    progress.log("[tflite_ptq] [bold]x[/bold]")
    assert capsys.readouterr().out == "[tflite_ptq] [bold]x[/bold]\n"


def test_spinner_plain_prints_start_and_done_with_seconds(plain, capsys):
    with progress.spinner("convert int8_tflite_ptq (TFLite converter)"):
        pass
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "convert int8_tflite_ptq (TFLite converter) ..."
    assert re.fullmatch(r"convert int8_tflite_ptq \(TFLite converter\): done \(\d+\.\d s\)", lines[1])
    assert len(lines) == 2


def test_spinner_plain_reraises_with_failed_line(plain, capsys):
    with pytest.raises(ValueError, match="bad op"):
        with progress.spinner("export fp32_onnx (tf2onnx)"):
            raise ValueError("bad op")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "export fp32_onnx (tf2onnx) ..."
    assert re.fullmatch(r"export fp32_onnx \(tf2onnx\): failed after \d+\.\d s", out[-1])


def test_track_plain_yields_everything_in_few_lines(plain, capsys, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_MIN_INTERVAL", 0.0)  # every 10 % step may print
    assert list(progress.track(range(1000), 1000, "evaluate int8_tflite_ptq", "images")) == list(range(1000))
    lines = capsys.readouterr().out.splitlines()
    assert 2 <= len(lines) <= 12  # start, at most one per 10 %, final
    assert lines[0].startswith("evaluate int8_tflite_ptq ...")
    assert any("500/1000 images (50 %" in ln for ln in lines)
    assert re.fullmatch(r"evaluate int8_tflite_ptq: done, 1000 images \(\d+\.\d s\)", lines[-1])


def test_track_plain_default_interval_keeps_fast_loops_quiet(plain, capsys):
    items = [object() for _ in range(1000)]
    assert list(progress.track(iter(items), None, "calibrate x", "images")) == items  # unknown length
    lines = capsys.readouterr().out.splitlines()
    assert lines == [lines[0], lines[-1]] and lines[-1].startswith("calibrate x: done, 1000 images")


def test_track_plain_reports_failure_and_early_stop(plain, capsys):
    def broken():
        yield 1
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        list(progress.track(broken(), 5, "evaluate y"))
    assert re.search(r"evaluate y: failed at 1/5 after \d+\.\d s", capsys.readouterr().out)
    for _ in zip(range(2), progress.track(range(10), None, "steps")):  # length taken from the range
        pass
    # zip dropped the generator after two items; closing it reports where it stopped
    assert re.search(r"steps: stopped at 2/10 after \d+\.\d s", capsys.readouterr().out)


def test_rich_nested_spinner_and_track_do_not_raise(rich_terminal):
    with progress.spinner("convert outer (TFLite converter)"):
        assert sum(progress.track(range(50), 50, "calibrate inner", "images")) == sum(range(50))
        progress.log("a line while live")
        with progress.spinner("inner spinner"):
            pass
    assert list(progress.track(range(3), None, "alone")) == [0, 1, 2]
    out = rich_terminal.getvalue()
    assert "\x1b[?25l" in out  # a live display was drawn (cursor hidden)
    assert "convert outer (TFLite converter): done" in out
    assert "calibrate inner: done, 50 images" in out  # the nested bar degraded to plain lines
    assert "a line while live" in out and "alone: done, 3" in out
    assert progress._live == 0


def test_rich_spinner_failure_closes_display(rich_terminal):
    with pytest.raises(KeyError):
        with progress.spinner("upload m.tflite (1.00 MB) to pi"):
            raise KeyError("x")
    assert "failed after" in rich_terminal.getvalue()
    assert progress._live == 0


def test_mode_follows_the_terminal_without_override(monkeypatch):
    monkeypatch.delenv("EDGEQ_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stdout", StringIO())  # not a TTY
    assert progress._rich() is False
    monkeypatch.setenv("EDGEQ_PROGRESS", "rich")
    assert progress._rich() is True


def test_keras_progress_plain_one_line_per_epoch(plain, capsys):
    import numpy as np

    from edgeq.core.tfcompat import keras

    k = keras()
    m = k.Sequential([k.Input((4,)), k.layers.Dense(3, activation="softmax")])
    m.compile(k.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    x, y = np.zeros((16, 4), np.float32), np.zeros(16, np.int64)
    cb = progress.keras_progress("QAT fine-tune tiny", 2, 2)
    try:
        m.fit(x, y, batch_size=8, epochs=2, steps_per_epoch=2, verbose=0, callbacks=[cb], validation_data=(x, y))
    finally:
        cb.close()
    lines = capsys.readouterr().out.splitlines()
    epochs = [ln for ln in lines if ": epoch " in ln]
    assert len(epochs) == 2 and "val_loss" in epochs[-1] and epochs[-1].startswith("QAT fine-tune tiny: epoch 2/2")
    assert lines[-1].startswith("QAT fine-tune tiny: done, 2 epoch(s)")


def test_keras_progress_rich_bar_closes(rich_terminal):
    import numpy as np

    from edgeq.core.tfcompat import keras

    k = keras()
    m = k.Sequential([k.Input((4,)), k.layers.Dense(3, activation="softmax")])
    m.compile(k.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    cb = progress.keras_progress("QAT fine-tune tiny", 1, 2)
    m.fit(np.zeros((16, 4), np.float32), np.zeros(16, np.int64), batch_size=8, epochs=1, steps_per_epoch=2,
          verbose=0, callbacks=[cb])
    cb.close()
    assert progress._live == 0
    assert "QAT fine-tune tiny: done, 1 epoch(s)" in rich_terminal.getvalue()
