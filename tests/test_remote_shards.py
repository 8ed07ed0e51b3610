"""Shards from object storage, for real: an HTTP server and an S3-compatible server (moto's) on
127.0.0.1, started and stopped here. The epoch read over the network equals the local one; a
dropped connection is read on from where it broke (no sample twice, none left out); a missing
shard, a stalled connection and a server that went away are retried a bounded number of times,
then skipped and counted, never a hang; a killed training run resumes exactly from HTTP shards."""
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from subprocesses import child_env

from uniemox.data import build_pretrain_loader, epoch_size, shard_urls
from uniemox.data.sample import ensure_sample_shards
from uniemox.data.tarstream import Retry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = Retry(attempts=2, timeout=1.0, backoff=0.05)


class FaultyHandler(SimpleHTTPRequestHandler):
    """Serves a folder; ``server.faults`` names shards to refuse (404), to stall, to cut once
    (half the bytes, then the connection closes), or ``down`` for every request."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name, faults = self.path.rsplit("/", 1)[-1], self.server.faults
        if faults.get("down") or name in faults.get("missing", ()):
            self.send_error(404 if name in faults.get("missing", ()) else 503)
            return
        if name in faults.get("stall", ()):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            time.sleep(20)  # far past the client's time-out
            return
        if name in faults.get("cut_once", ()):
            faults["cut_once"].discard(name)
            data = (self.server.root / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return ensure_sample_shards(str(tmp_path_factory.mktemp("cache")), images_per_class_per_split=4, shard_size=8)


@pytest.fixture()
def http(shards):
    from pathlib import Path
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(FaultyHandler, directory=shards))
    server.root, server.faults = Path(shards), {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def keys_of(urls, **kw):
    loader = build_pretrain_loader(urls, batch_size=4, num_workers=0, image_size=32, shuffle_buffer=1,
                                   drop_last=False, retry=FAST, **kw)
    return [k for batch in loader for k in batch["key"]], loader.skip_counts


def remote(urls, base):
    return [f"{base}/{os.path.basename(u)}" for u in urls]


def test_http_epoch_equals_the_local_one_and_counts_from_its_manifest(http, shards):
    server, base = http
    local = shard_urls(shards)
    assert keys_of(remote(local, base))[0] == keys_of(local)[0]
    assert epoch_size(remote(local, base)) == epoch_size(local) == 32


def test_pipe_commands_open_shards(shards):
    local = shard_urls(shards)[:2]
    assert keys_of([f"pipe:cat {u}" for u in local])[0] == keys_of(local)[0]


def test_a_connection_cut_mid_shard_is_read_on_exactly(http, shards):
    server, base = http
    local = shard_urls(shards)
    server.faults["cut_once"] = {os.path.basename(local[1])}
    keys, skips = keys_of(remote(local, base))
    assert keys == keys_of(local)[0] and sum(skips.values()) == 0
    assert not server.faults["cut_once"]  # the cut happened, then the retry read on


@pytest.mark.parametrize("fault,kind", [("missing", "unreadable_shard"), ("stall", "unreadable_shard")])
def test_a_missing_or_stalled_shard_is_skipped_and_counted_never_a_hang(http, shards, fault, kind):
    server, base = http
    local = shard_urls(shards)
    bad = os.path.basename(local[2])
    server.faults[fault] = {bad}
    start = time.monotonic()
    keys, skips = keys_of(remote(local, base))
    assert time.monotonic() - start < 30  # time-outs bound every wait: 3 tries of 1 s, backoff 0.05 s
    expected = [k for k in keys_of(local)[0] if k not in keys_of([local[2]])[0]]
    assert keys == expected and skips[kind] == 1


def test_a_server_that_goes_away_mid_epoch(http, shards):
    server, base = http
    urls = remote(shard_urls(shards), base)
    loader = build_pretrain_loader(urls, batch_size=4, num_workers=0, image_size=32, shuffle_buffer=1,
                                   drop_last=False, retry=FAST)
    seen = []
    for i, batch in enumerate(loader):
        seen += batch["key"]
        if i == 1:
            server.faults["down"] = True  # the store is gone for the rest of the epoch
    assert 8 <= len(seen) < 32 and loader.skip_counts["unreadable_shard"] >= 2


def test_s3_compatible_store(shards, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in dict(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                         AWS_ENDPOINT_URL=f"http://{host}:{port}").items():
            monkeypatch.setenv(k, v)
        fs = s3fs.S3FileSystem()
        fs.mkdir("emo")
        for name in os.listdir(shards):
            fs.put(os.path.join(shards, name), f"emo/sample/{name}")
        local = shard_urls(shards)
        urls = [f"s3://emo/sample/{os.path.basename(u)}" for u in local]
        assert keys_of(urls)[0] == keys_of(local)[0]
        assert epoch_size(urls) == 32
        missing = urls[:1] + ["s3://emo/sample/train-999999.tar"]
        keys, skips = keys_of(missing)
        assert keys == keys_of(local[:1])[0] and skips["unreadable_shard"] == 1
    finally:
        server.stop()


def test_training_from_http_shards_resumes_exactly(http, shards, tmp_path):
    _, base = http
    pattern = f"{base}/train-{{000000..000003}}.tar"
    args = [sys.executable, os.path.join(REPO, "launch", "pretrain.py"), f"data.shards={pattern}",
            "teacher.model=uniemox-clip-tiny-64", "teacher.pretrained=uniemox-sample", "model.name=uniemox_vit_tiny_patch16",
            "model.arch={img_size: 32, depth: 2, decoder_depth: 1}", "data.batch_size=4", "data.num_workers=1",
            "data.shuffle_buffer=8", "optim.max_steps=6", "optim.warmup_steps=1", "log.every=1",
            "log.progress=false", "log.image_every=0", "checkpoint.every=2", "data.io_timeout=2"]

    def run(run_dir, *extra, env=None):
        return subprocess.run(args + ["--run-dir", str(run_dir)] + list(extra), capture_output=True, text=True,
                              timeout=600, env=child_env(env), cwd=REPO)

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert run(tmp_path / "killed", env={"UNIEMOX_FAULT": "kill@step:3"}).returncode == -9
    resumed = run(tmp_path / "killed", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def rows(d):
        return {r["step"]: r for r in map(json.loads, open(d / "metrics.jsonl"))}
    a, b = rows(tmp_path / "straight"), rows(tmp_path / "killed")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert a[step]["batch_crc32"] == b[step]["batch_crc32"]
        assert a[step]["loss/loss"] == pytest.approx(b[step]["loss/loss"], rel=1e-5)
    shutil.rmtree(tmp_path)
