"""Progress read from rank 0's metrics endpoint: exposition text -> status.progress, which pod is read, and the
reconcile writes it only while the Train runs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from reconcile_factories import NOW, gang, pod, resource

from m2f_operator.progress import progress_from_metrics, rank_zero_endpoint, scrape
from m2f_operator.reconcile import Observed, reconcile

EXPOSITION = """# TYPE m2f_train_epoch gauge
m2f_train_epoch 3.0
m2f_train_epochs_total 12.0
m2f_train_step 17.0
m2f_train_loss 1.234567
m2f_train_images_per_second 3.25
m2f_validation_metric{name="PQ"} 0.4212345
m2f_gpu_memory_allocated_bytes 0.0
"""


def test_exposition_becomes_status_progress_rounded_for_display():
    assert progress_from_metrics(EXPOSITION, NOW) == {
        "epoch": 3, "totalEpochs": 12, "step": 17, "loss": 1.2346, "imagesPerSecond": 3.25,
        "lastMetric": {"name": "PQ", "value": 0.4212}, "updateTime": "2026-01-01T12:00:00Z"}


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "m2f_train_epoch 1.0\n", "m2f_train_step NaN\n",
                                  "m2f_train_epoch 0.0\nm2f_train_step 0.0\n"])
def test_no_training_step_yet_is_no_progress(text):
    assert progress_from_metrics(text, NOW) is None


def _with_ip(body: dict, ip: str | None) -> dict:
    if ip:
        body["status"]["podIP"] = ip
    return body


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([_with_ip(p, f"10.0.0.{i}") for i, p in enumerate(gang())], "10.0.0.0:9091"),
        ([_with_ip(pod(index=1), "10.0.0.1")], None),  # rank 0 absent
        ([_with_ip(pod(index=0, phase="Pending"), None)], None),  # not running yet, no address
        ([_with_ip(pod(index=0, attempt=0), "10.0.0.1"), _with_ip(pod(index=0, attempt=1), "10.0.0.2")],
         "10.0.0.2:9091"),  # the newest attempt
        ([_with_ip(pod(index=0, attempt=1, phase="Pending"), None), _with_ip(pod(index=0, attempt=0), "10.0.0.1")],
         None),  # the restarted gang's rank 0 is not up: the old one is not read
        ([_with_ip(pod(index=0, role="onnx"), "10.0.0.3")], None),
    ],
)
def test_rank_zero_endpoint(pods, expected):
    assert rank_zero_endpoint(pods) == expected


@pytest.mark.parametrize(("phase", "written"), [("Running", True), ("Created", False), ("Succeeded", False)])
def test_reconcile_writes_progress_only_while_running(phase, written):
    pods = gang(phase="Running" if phase != "Succeeded" else "Succeeded",
                exit_code=0 if phase == "Succeeded" else None)
    if phase == "Created":
        pods = gang(phase="Pending")
    body = resource(status={"phase": phase, "conditions": [], "restarts": 0})
    progress = progress_from_metrics(EXPOSITION, NOW)
    plan = reconcile(Observed(body, pods, NOW, progress=progress))
    assert (plan.status_patch.get("progress") == progress) is written, plan.status_patch


def _one_answer(payload: bytes, trickle: bool = False) -> str:
    """A socket that answers one request with `payload` (or a 200 trickling a byte every 0.1 s): rank 0 is user
    code, so its answer is untrusted input."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer():
        connection, _ = server.accept()
        with connection, server:
            connection.recv(4096)
            if not trickle:
                connection.sendall(payload)
                return
            connection.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
            with contextlib.suppress(OSError):
                for _ in range(100):
                    connection.sendall(b"x")
                    time.sleep(0.1)

    threading.Thread(target=answer, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}"


GOOD = b"m2f_train_epoch 1.0\nm2f_train_step 3.0\n"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(GOOD), GOOD), {"epoch": 1, "step": 3}),
        (b"NOT HTTP AT ALL\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", None),  # cut short
        (b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/\r\nContent-Length: 0\r\n\r\n", None),  # not followed
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", None),
        ("trickle", None),  # a byte at a time: the read ends at the overall timeout
    ],
)
def test_a_scrape_never_raises_and_is_bounded_in_time(answer, expected):
    endpoint = _one_answer(b"", trickle=True) if answer == "trickle" else _one_answer(answer)
    began = time.monotonic()
    progress = scrape(endpoint, NOW, timeout=1.0)
    assert time.monotonic() - began < 5
    assert (progress and {k: progress[k] for k in ("epoch", "step")}) == expected
