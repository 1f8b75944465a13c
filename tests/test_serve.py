"""`energytta-serve`: the API contract, dynamic batching, the bounded queue, deadlines,
disconnects, shutdown and every bad input of the contract (tiny in-code model)."""
from __future__ import annotations

import base64
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from energytta.errors import UserError
from energytta.pipeline import TextToAudio
from energytta.serve.engine import Engine
from energytta.serve.options import ServeOptions
from serve_util import gate, in_thread, running, wait_for

DUR = 0.6  # three tokens of the tiny model (0.2 s each): fast
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipe(tiny_ckpts) -> TextToAudio:
    return TextToAudio.from_pretrained(tiny_ckpts["student"], device="cpu")


@pytest.fixture
def engine(pipe) -> Engine:
    return Engine(pipe, "student")


def _wav(data: bytes) -> tuple[np.ndarray, int]:
    wav, sr = sf.read(io.BytesIO(data), dtype="float32")
    return wav, sr


def _error(body: bytes) -> str:
    msg = json.loads(body)["error"]
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def test_health_models_and_a_wav_with_its_settings_in_headers(engine):
    with running(engine) as srv:
        status, _, body = srv.call("GET", "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        models = json.loads(srv.call("GET", "/v1/models")[2])["data"]
        assert [m["id"] for m in models] == ["student"] and models[0]["sample_rate"] == 16000
        status, headers, body = srv.generate({"prompt": "a dog barks", "duration": DUR})
        assert status == 200 and headers["content-type"] == "audio/wav"
        wav, sr = _wav(body)
        assert sr == 16000 and wav.shape == (round(DUR * sr),)
        assert headers["x-model"] == "student" and float(headers["x-duration"]) == DUR
        assert int(headers["x-seed"]) >= 0 and headers["x-num-samples"] == "1"


def test_json_answer_holds_every_sample_its_spectrogram_and_settings(engine):
    with running(engine) as srv:
        status, _, body = srv.generate({"prompt": "rain", "duration": DUR, "num_samples": 2,
                                        "seed": 3, "cfg": 2.0}, accept="application/json")
        assert status == 200
        answer = json.loads(body)
        assert answer["settings"]["seed"] == 3 and answer["settings"]["cfg"] == 2.0
        assert answer["settings"]["num_samples"] == 2 and len(answer["clips"]) == 2
        for clip in answer["clips"]:
            wav, _ = _wav(base64.b64decode(clip["audio"]))
            assert wav.shape == (round(DUR * 16000),) and clip["seconds"] == DUR
            spec = clip["spectrogram"]
            assert len(base64.b64decode(spec["data"])) == spec["n_mels"] * spec["frames"]


def test_a_seeded_request_gives_the_same_audio_alone_or_among_others(engine, pipe):
    body = {"prompt": "a bell rings", "duration": DUR, "seed": 11, "num_samples": 2}
    with running(engine, window_ms=300) as srv:
        alone = json.loads(srv.generate(body, accept="application/json")[2])
        crowd = [in_thread(srv.generate, {"prompt": f"wind {i}", "duration": DUR})
                 for i in range(3)]
        again = json.loads(srv.generate(body, accept="application/json")[2])
        for box in crowd:
            box["thread"].join(60)
            assert box["result"][0] == 200
    assert [c["audio"] for c in alone["clips"]] == [c["audio"] for c in again["clips"]]
    # ... and it is what the Python API gives for the same settings
    s = pipe.settings(seed=11, duration=DUR, batch_size=2)
    direct = pipe.generate(["a bell rings"] * 2, s).wavs
    served = np.stack([_wav(base64.b64decode(c["audio"]))[0] for c in alone["clips"]])
    assert np.abs(served - np.clip(direct, -1, 1)).max() <= 1.5 / 32768


def test_concurrent_requests_share_one_batch(engine):
    with running(engine, window_ms=1500, max_batch=8) as srv:
        boxes = [in_thread(srv.generate, {"prompt": p, "duration": DUR})
                 for p in ("a dog barks", "a cat meows")]
        for box in boxes:
            box["thread"].join(60)
            status, headers, _ = box["result"]
            assert status == 200 and headers["x-batch-rows"] == "2"
        m = srv.metrics()
    assert m["batch_sizes"] == {"2": 1} and m["clips_served"] == 2 and m["batches"] == 1
    assert m["latency_ms"]["count"] == 2 and m["latency_ms"]["p50"] > 0


def test_without_batching_each_request_is_its_own_call(pipe):
    with running(Engine(pipe, "student", batching=False), batching=False,
                 window_ms=1500) as srv:
        boxes = [in_thread(srv.generate, {"prompt": p, "duration": DUR})
                 for p in ("a dog barks", "a cat meows")]
        for box in boxes:
            box["thread"].join(60)
            assert box["result"][0] == 200
        assert srv.metrics()["batch_sizes"] == {"1": 2}


def test_different_settings_queue_apart(engine):
    with running(engine, window_ms=1000, max_batch=8) as srv:
        boxes = [in_thread(srv.generate, {"prompt": "a", "duration": d})
                 for d in (DUR, DUR, 2 * DUR)]
        for box in boxes:
            box["thread"].join(60)
            assert box["result"][0] == 200
        assert srv.metrics()["batch_sizes"] == {"1": 1, "2": 1}


BAD = [
    (b'{"prompt": "a dog', 400, "not valid JSON"),
    (b'["a dog"]', 400, "JSON object"),
    (b'{"prompt": "x", "promt": "y"}', 422, "unknown field(s) 'promt'"),
    (json.dumps({"prompt": "x" * 100_000}).encode(), 413, "100000 characters"),
    (b'{"prompt": ""}', 422, "'prompt' is required"),
    (b'{"duration": 1}', 422, "'prompt' is required"),
    (b'{"prompt": "x", "duration": 0}', 422, "'duration' is 0s"),
    (b'{"prompt": "x", "duration": -2}', 422, "'duration' is -2s"),
    (b'{"prompt": "x", "duration": NaN}', 400, "NaN"),
    (b'{"prompt": "x", "duration": 1e400}', 422, "'duration' is inf"),
    (b'{"prompt": "x", "duration": 31}', 422, "<= 30s"),
    (b'{"prompt": "x", "duration": "2"}', 422, "must be a number"),
    (b'{"prompt": "x", "model": "teacher"}', 422, "unknown model 'teacher'"),
    (b'{"prompt": "x", "seed": -1}', 422, "'seed' is -1"),
    (json.dumps({"prompt": "x", "seed": 2 ** 63}).encode(), 422, "'seed' is"),
    (b'{"prompt": "x", "seed": 1.5}', 422, "whole number"),
    (b'{"prompt": "x", "num_samples": 9}', 422, "'num_samples' is 9"),
    (b'{"prompt": "x", "iterations": 0}', 422, "'iterations' is 0"),
    (b'{"prompt": "x", "cfg": 1000}', 422, "'cfg' is 1000"),
    (b'{"prompt": "x", "edit": "continue"}', 422, "needs 'audio'"),
    (b'{"prompt": "x", "edit": "continue", "audio": "%%%", "duration": 1}', 422,
     "not a base64"),
    (b'{"prompt": "x", "audio": "AAAA"}', 422, "need 'edit'"),
]


@pytest.mark.parametrize("body,status,words", BAD, ids=[b[2][:24] for b in BAD])
def test_bad_input_is_one_line_and_the_server_keeps_serving(engine, body, status, words):
    with running(engine) as srv:
        got, _, answer = srv.generate(body)
        assert got == status and words in _error(answer)
        assert srv.generate({"prompt": "ok", "duration": DUR})[0] == 200
        assert srv.metrics()["queue_depth"] == 0


def test_an_oversized_body_is_refused_before_it_is_read(engine):
    with running(engine, max_body_bytes=1000) as srv:
        status, _, body = srv.generate(b'{"prompt": "' + b"x" * 5000 + b'"}')
        assert status == 413 and "the limit is 1000" in _error(body)


def test_a_flood_gets_503_with_retry_after_and_nothing_is_lost(engine):
    opened = gate(engine)
    with running(engine, queue_size=2, max_batch=1, window_ms=0) as srv:
        first = in_thread(srv.generate, {"prompt": "first", "duration": DUR})
        wait_for(lambda: srv.state.batcher.running_rows == 1)
        queued = [in_thread(srv.generate, {"prompt": f"q{i}", "duration": DUR})
                  for i in range(2)]
        wait_for(lambda: srv.metrics()["queue_depth"] == 2)
        status, headers, body = srv.generate({"prompt": "one too many", "duration": DUR})
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert "queue is full" in _error(body)
        opened.set()
        for box in [first, *queued]:
            box["thread"].join(60)
            assert box["result"][0] == 200
        m = srv.metrics()
    assert m["rejected_full"] == 1 and m["requests_ok"] == 3 and m["queue_depth"] == 0


def test_a_client_that_disconnects_while_queued_costs_no_batch_row(engine):
    opened = gate(engine)
    with running(engine, max_batch=1, window_ms=0) as srv:
        first = in_thread(srv.generate, {"prompt": "first", "duration": DUR})
        wait_for(lambda: srv.state.batcher.running_rows == 1)
        body = json.dumps({"prompt": "gone", "duration": DUR}).encode()
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: srv.metrics()["queue_depth"] == 1)
        wait_for(lambda: srv.metrics()["dropped_disconnected"] == 1)
        opened.set()
        first["thread"].join(60)
        assert first["result"][0] == 200
        m = srv.metrics()
    assert m["batches"] == 1 and m["clips_served"] == 1 and m["queue_depth"] == 0


def test_a_client_that_disconnects_mid_generation_leaves_the_server_serving(engine):
    opened = gate(engine)
    with running(engine, max_batch=4, window_ms=0) as srv:
        body = json.dumps({"prompt": "gone", "duration": DUR}).encode()
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: srv.state.batcher.running_rows == 1)
        opened.set()  # its batch finishes for nobody
        wait_for(lambda: srv.state.batcher.running_rows == 0)
        status, _, answer = srv.generate({"prompt": "next", "duration": DUR})
        assert status == 200 and _wav(answer)[0].size == round(DUR * 16000)
        m = srv.metrics()
    assert m["queue_depth"] == 0 and m["failed"] == 0 and m["batches"] == 2


def test_deadlines_answer_503_in_the_queue_and_504_in_a_batch(engine):
    opened = gate(engine)
    with running(engine, max_batch=1, window_ms=0, deadline_s=0.8) as srv:
        first = in_thread(srv.generate, {"prompt": "slow", "duration": DUR})
        wait_for(lambda: srv.state.batcher.running_rows == 1)
        t0 = time.monotonic()
        status, headers, body = srv.generate({"prompt": "waits", "duration": DUR})
        assert status == 503 and "deadline" in _error(body) and "retry-after" in headers
        assert time.monotonic() - t0 < 5
        first["thread"].join(60)
        assert first["result"][0] == 504 and "deadline" in _error(first["result"][2])
        opened.set()
        wait_for(lambda: srv.state.batcher.running_rows == 0)
        assert srv.generate({"prompt": "fine", "duration": DUR})[0] in (200, 504)
        m = srv.metrics()
    assert m["expired_in_queue"] == 1 and m["timed_out_running"] >= 1


def test_shutdown_finishes_the_running_batch_and_refuses_the_queued(engine):
    opened = gate(engine)
    with running(engine, max_batch=1, window_ms=0) as srv:
        first = in_thread(srv.generate, {"prompt": "running", "duration": DUR})
        wait_for(lambda: srv.state.batcher.running_rows == 1)
        queued = in_thread(srv.generate, {"prompt": "queued", "duration": DUR})
        wait_for(lambda: srv.metrics()["queue_depth"] == 1)
        srv.server.begin_shutdown()
        queued["thread"].join(30)
        status, _, body = queued["result"]
        assert status == 503 and "shutting down" in _error(body)
        opened.set()
        first["thread"].join(60)
        assert first["result"][0] == 200 and _wav(first["result"][2])[0].size


def test_a_token_guards_everything_but_the_page_and_health(engine):
    with running(engine, token="s3cret") as srv:
        assert srv.call("GET", "/health")[0] == 200 and srv.call("GET", "/")[0] == 200
        status, _, body = srv.call("GET", "/v1/models")
        assert status == 401 and "Authorization: Bearer" in _error(body)
        assert srv.generate({"prompt": "x", "duration": DUR})[0] == 401
        ok = srv.call("GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok[0] == 200


def test_a_failed_warm_up_is_reported_not_hung_on(engine, monkeypatch):
    def broken() -> None:
        raise RuntimeError("out of memory")
    monkeypatch.setattr(engine, "warm_up", broken)
    with running(engine, expect_warm=False) as srv:
        status, _, body = srv.call("GET", "/health")
        assert status == 503 and "out of memory" in json.loads(body)["status"]
        status, _, body = srv.generate({"prompt": "x", "duration": DUR})
        assert status == 503 and "failed to warm up" in _error(body)


def test_non_local_binds_need_a_token_and_caps_are_checked():
    with pytest.raises(UserError, match="--token"):
        ServeOptions(host="0.0.0.0")
    ServeOptions(host="0.0.0.0", token="t")  # fine
    ServeOptions(host="::1")  # loopback needs none
    with pytest.raises(UserError, match="--max-batch"):
        ServeOptions(max_batch=0)
    with pytest.raises(UserError, match="--window-ms"):
        ServeOptions(window_ms=math.nan)


def test_continue_and_inpaint_through_the_api(engine):
    t = np.arange(int(DUR * 16000)) / 16000
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), 16000, format="WAV", subtype="PCM_16")
    audio = base64.b64encode(buf.getvalue()).decode()
    with running(engine) as srv:
        status, _, body = srv.generate({"prompt": "a tone goes on", "edit": "continue",
                                        "audio": audio, "duration": 2 * DUR, "seed": 1})
        assert status == 200 and _wav(body)[0].size == round(2 * DUR * 16000)
        status, _, body = srv.generate({"prompt": "a click", "edit": "inpaint",
                                        "audio": audio, "regenerate": "0.2-0.4"},
                                       accept="application/json")
        assert status == 200
        answer = json.loads(body)
        assert answer["edit"]["mode"] == "inpaint" and answer["clips"][0]["seconds"] == DUR
        status, _, body = srv.generate({"prompt": "x", "edit": "inpaint", "audio": audio,
                                        "regenerate": "5-9"})
        assert status == 422 and _error(body)


def test_the_page_loads_no_asset_from_the_internet(engine):
    with running(engine) as srv:
        status, headers, body = srv.call("GET", "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'id="prompt"' in page and "/v1/generate" in page
    assert "http://" not in page and "https://" not in page


def test_the_command_prints_its_url_and_stops_gracefully(tiny_ckpts):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "energytta.serve", "--ckpt",
                             str(tiny_ckpts["student"]), "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "ready at http://127.0.0.1:" in line, proc.stderr.read()
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert b"200 OK" in sock.recv(4096)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it ended on
    finally:
        proc.kill()
    bad = subprocess.run([sys.executable, "-m", "energytta.serve", "--host", "0.0.0.0"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--token" in bad.stderr


def test_the_command_and_page_are_packaged_and_help_skips_heavy_imports():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "energytta-serve = energytta.serve.cli:main" in cfg["options.entry_points"][
        "console_scripts"]
    patterns = [p.strip() for p in cfg["options.package_data"]["energytta"].replace(",", "\n")
                .splitlines() if p.strip()]
    assert "serve/page.html" in patterns and (ROOT / "energytta/serve/page.html").is_file()
    code = ("import sys\nfrom energytta.serve.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted({'torch', 'fastapi', 'uvicorn'} & "
            "set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and "(default: 127.0.0.1)" in out.stdout
    assert out.stdout.strip().endswith("[]"), out.stdout[-200:]
