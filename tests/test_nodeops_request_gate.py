"""The request gate: gunicorn's hooks (node_exec.RequestGate) against the swap's hold (node_data._requests_held).

No hosts, no database: both sides on one real file, in threads of this
process (flock locks belong to open files, so each side's descriptor
conflicts with the other's as across processes).
"""

import os
import runpy
import threading
import time
from pathlib import Path

import pytest

from nodeops.hostside import node_data

EXEC = runpy.run_path(str(Path(__file__).resolve().parent.parent / "nodeops" / "hostside" / "node_exec.py"),
                      run_name="toppcloud_exec")


def in_thread(fn):
    done = threading.Event()

    def run():
        fn()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def test_it_holds_a_new_request_until_the_swap_is_done(tmp_path):
    gate = EXEC["RequestGate"](str(tmp_path / "requests.gate"))
    with node_data._requests_held(gate.path) as held:
        request = in_thread(lambda: gate.pre_request(None, None))
        assert not request.wait(0.3)  # waiting at the gate
    assert request.wait(2)
    assert held["seconds"] >= 0.3 and "undrained" not in held
    assert os.path.getsize(gate.path) == 0  # open again


def test_it_waits_for_requests_in_flight_before_it_swaps(tmp_path):
    gate = EXEC["RequestGate"](str(tmp_path / "requests.gate"))
    gate.pre_request(None, None)  # a request in flight on this thread
    entered = threading.Event()

    def swap():
        with node_data._requests_held(gate.path):
            entered.set()

    in_thread(swap)
    assert not entered.wait(0.3)
    gate.post_request(None, None, {}, None)  # the request is answered
    assert entered.wait(2)


def test_it_lets_requests_through_a_hold_left_behind(tmp_path):
    path = tmp_path / "requests.gate"
    path.write_text(f"{time.time() - 1:.3f}\n")  # a swap that died holding the gate
    gate = EXEC["RequestGate"](str(path))
    start = time.monotonic()
    gate.pre_request(None, None)
    assert time.monotonic() - start < 0.1
    gate.post_request(None, None, {}, None)


def test_it_lets_requests_through_when_there_is_no_gate_file(tmp_path):
    gate = EXEC["RequestGate"](str(tmp_path / "missing-dir" / "requests.gate"))  # cannot even be made
    gate.pre_request(None, None)
    gate.post_request(None, None, {}, None)


def test_it_never_writes_through_a_link_an_app_put_there(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "requests.gate").symlink_to(victim)
    with pytest.raises(node_data.DataError, match="request gate .* symbolic links"):
        with node_data._requests_held(str(tmp_path / "app" / "requests.gate")):
            pass
    os.link(victim, tmp_path / "app" / "hard.gate")
    with pytest.raises(node_data.DataError, match="not a plain file of its own"):
        with node_data._requests_held(str(tmp_path / "app" / "hard.gate")):
            pass
    assert victim.read_text() == "precious\n"


def test_it_holds_nothing_where_the_app_has_no_directory(tmp_path):
    with node_data._requests_held(str(tmp_path / "no-such-app" / "requests.gate")) as held:
        assert held is None
    assert not (tmp_path / "no-such-app").exists()
