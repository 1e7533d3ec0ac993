import os
import signal

import pytest

from medjax.training.signals import StopRequest


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_signal_sets_flag_and_exit_code(sig, code):
    before = signal.getsignal(sig)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested
        assert stop.exit_code == code
        assert stop.name == signal.Signals(sig).name
    assert signal.getsignal(sig) == before


def test_second_sigint_interrupts():
    with StopRequest():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
