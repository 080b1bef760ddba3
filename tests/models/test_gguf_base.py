"""GGUF base plumbing that needs no weights: path folding, refusals, the sha256 stamp.

The conversion itself (dequantize -> cached folder -> every verb) is exercised on real weights in tests/real.
"""

import subprocess
import sys

import pytest

from glmtune.config.load import ConfigError
from glmtune.config.schema import ModelSection
from glmtune.models import gguf_base
from glmtune.models.load import resolve_path


def test_gguf_file_folds_into_path_once():
    m = ModelSection(path="/models/smol", gguf_file="smol.Q4_1.gguf")
    assert (m.path, m.gguf_file) == ("/models/smol/smol.Q4_1.gguf", None)
    again = ModelSection(**m.model_dump())  # a run's saved config reloads to the same path
    assert again.path == m.path


@pytest.mark.parametrize("bad", ["../x.gguf", "sub/x.gguf", "x.bin"])
def test_gguf_file_must_be_a_gguf_name(bad):
    with pytest.raises(ValueError, match="model.gguf_file"):
        ModelSection(path="/models", gguf_file=bad)


def test_missing_and_fake_gguf_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such GGUF file"):
        resolve_path(str(tmp_path / "nope.gguf"))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        resolve_path(str(fake))


def test_sha256_is_stamped_and_follows_content(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("GLMTUNE_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "a.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    assert gguf_base._sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert len(list((tmp_path / "cache" / "gguf" / "stamps").iterdir())) == 1
    f.write_bytes(b"GGUF" + b"\1" * 101)  # new size (and mtime): a new stamp, the new digest
    assert gguf_base._sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_cli_names_the_bad_gguf_in_one_line(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"nope")
    p = subprocess.run([sys.executable, "-m", "glmtune", "data", "stats", f"model.path={fake}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1] == f"error: model.path {fake}: not a GGUF file (its first bytes are not 'GGUF')"
    assert "Traceback" not in p.stderr
