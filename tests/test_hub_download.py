"""Downloading a published model through huggingface_hub, from a hub endpoint served on this machine.

The server answers as the hub does for file downloads (``/<repo>/resolve/<revision>/<file>``: HEAD with the commit
and ETag headers, then GET), so the real download path runs offline: ``from_pretrained("owner/name")`` fetches
the folder into the cache, later loads read the cache, and a missing repo is a clear error.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import msa2net
from msa2net.models.pretrained import PretrainedError

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
REPO = "msa2net-tests/served"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, list[str]]]:
    """A published folder served as ``REPO`` at a local endpoint; yields the folder and the paths asked for."""
    folder = tmp_path / "published"
    torch.manual_seed(5)
    msa2net.create_model("msa2net_test", num_classes=2, img_size=64).save_pretrained(
        folder, class_names=["background", "lesion"]
    )
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            requests.append(self.path)
            prefix = f"/{REPO}/resolve/"
            name = self.path.split("?")[0][len(prefix) :].split("/", 1)[-1]
            path = folder / name
            if not self.path.startswith(prefix) or not path.is_file():
                self.send_response(404)
                self.send_header(
                    "X-Error-Code", "RepoNotFound" if not self.path.startswith(prefix) else "EntryNotFound"
                )
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(body=True)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield folder, requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_repo_id_downloads_into_the_cache_and_loads_from_it_again(hub, tmp_path: Path) -> None:
    folder, requests = hub
    cache = tmp_path / "cache"
    local = msa2net.MSA2Net.from_pretrained(folder)
    loaded = msa2net.MSA2Net.from_pretrained(REPO, cache_dir=cache)
    assert all(torch.equal(a, b) for a, b in zip(local.state_dict().values(), loaded.state_dict().values()))
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    assert (snapshot / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    assert (snapshot / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    asked = len(requests)
    assert asked > 0
    again = msa2net.MSA2Net.from_pretrained(REPO, cache_dir=cache)  # from the cache, without a request
    assert len(requests) == asked
    assert all(torch.equal(a, b) for a, b in zip(local.state_dict().values(), again.state_dict().values()))


def test_a_repo_the_hub_does_not_have_is_a_clear_error(hub, tmp_path: Path) -> None:
    with pytest.raises(PretrainedError) as info:
        msa2net.MSA2Net.from_pretrained("msa2net-tests/absent", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "downloading config.json of 'msa2net-tests/absent' from http://127.0.0.1:" in message
    assert "failed: RepositoryNotFoundError: 404 Client Error. Check the repo id" in message
    assert not any((tmp_path / "cache").rglob("config.json"))
