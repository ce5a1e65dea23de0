"""SIGTERM/SIGINT: at once outside ``algo.train()``, after the iteration inside it."""

from __future__ import annotations

import signal

import pytest

from trainer.cancel import Canceled, CancelToken


@pytest.fixture
def cancel():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    token = CancelToken()
    token.install()
    yield token
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_signal_outside_training_cancels_at_once(cancel):
    with pytest.raises(Canceled) as raised:
        signal.raise_signal(signal.SIGTERM)
    assert raised.value.exit_code == 143
    with pytest.raises(Canceled):
        cancel.check()  # and stays canceled


def test_a_signal_inside_training_takes_effect_at_the_next_check(cancel, capsys):
    with cancel.deferred():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    assert "stopping after the current iteration" in capsys.readouterr().err
    with pytest.raises(Canceled) as raised:
        cancel.check()
    assert raised.value.exit_code == 130  # the first signal decides
    with pytest.raises(Canceled):  # out of the block a signal cancels at once again
        signal.raise_signal(signal.SIGTERM)


def test_a_finishing_run_only_records_signals_and_ignore_drops_them(cancel):
    cancel.check()  # nothing received yet
    cancel.defer()
    signal.raise_signal(signal.SIGTERM)
    assert cancel.signum == signal.SIGTERM
    cancel.ignore()
    signal.raise_signal(signal.SIGTERM)  # ignored: the test process lives on
