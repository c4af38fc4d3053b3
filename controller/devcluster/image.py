"""The project's container image, built here without a registry: Debian packages, then PyPI.

`ds01-controller:<version>` is three layers, each cached outside the repository
(`binaries.cache_root() / "image"`) under a key of exactly what went into it, so a
warm `ds01 dev up` (or a CI run on a warm machine) rebuilds only what changed:

1. **Debian**: `mmdebstrap --variant=extract` of bookworm with the packages in
   `deploy/image/debian-packages` (Python 3.11 and the C++ runtime grpcio needs),
   minus documentation, manuals and locales. Nothing runs at build time, so there
   is no shell, package manager or compiler beyond what those packages bring.
2. **Dependencies**: the wheels pinned with their hashes in
   `deploy/image/requirements.txt` (`python -m controller.devcluster.image lock`
   regenerates it from the tested `.venv`), installed with `pip --target` for
   CPython 3.11 on manylinux x86_64, binary wheels only.
3. **The project**: its wheel, built from the checkout, and the `ds01` and
   `kubectl-ds01` entry points.

The `Dockerfile` at the repository root makes the same image for labs with a
registry (same base release and packages, same lock file, same entry point);
`tests/unit/test_image_recipe.py` checks that the two recipes agree and
`tests/node/test_image.py` checks the built image itself. The image carries no
development-only code path: the production commands (`ds01 operator`, `ds01
agent`, `kubectl ds01`) import nothing from `controller.devcluster` (which
needs the `local` extra's `cryptography`, not installed here).

A docker-archive tar is what `ctr images import` (the node's containerd) and
`docker load` (the dev dockerd) read. The sandbox ("pause") image the node's pods
share is built the same way from Debian's static busybox (`busybox_image`).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from controller import __version__
from controller.devcluster.binaries import cache_root, source_root

NAME = "ds01-controller"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PYTHON = "3.11"
SITE_PACKAGES = f"usr/local/lib/python{PYTHON}/dist-packages"
ENTRYPOINT = ["/usr/local/bin/ds01"]
ENTRY_SCRIPTS = ("ds01", "kubectl-ds01")
"""Both are copies of `deploy/image/ds01`."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64")
ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
]
EPOCH = 1_700_000_000
"""Every file's time in the layers, so the same inputs give the same bytes."""
LEAN = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "var/cache/apt",
    "var/lib/apt/lists",
)
NONROOT = "nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin"
"""The operator's user (manifests/base/operator.yaml runs it as 65532): named, because
kopf asks the passwd database who it runs as (`getpass.getuser`)."""
PASSWD = f"root:x:0:0:root:/root:/usr/sbin/nologin\n{NONROOT}\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"
BUSYBOX_NAME = "localhost/ds01/busybox:local"
"""The pods' sandbox ("pause") image, and a small image for trying things in pods."""
BUSYBOX_APPLETS = ("sh", "sleep", "cat", "ls", "echo", "true", "id", "head")


def image_name(version: str = __version__) -> str:
    return f"{NAME}:{version}"


def recipe_dir() -> Path:
    return source_root() / "deploy" / "image"


def debian_packages() -> list[str]:
    """The Debian packages of the base layer (comments and blank lines ignored)."""
    lines = (recipe_dir() / "debian-packages").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def locked() -> dict[str, str]:
    """The pinned dependency versions: distribution name -> version."""
    pins = {}
    for raw in (recipe_dir() / "requirements.txt").read_text().splitlines():
        line = raw.strip().rstrip("\\").strip()
        if line and not line.startswith(("#", "--")) and "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.split(";")[0].strip()
    return pins


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def project_key(root: Path | None = None) -> str:
    """What the project layer is made of: the package's files and pyproject.toml."""
    root = root or source_root()
    parts = [(root / "pyproject.toml").read_bytes()]
    for path in _files(root / "controller"):
        parts += [str(path.relative_to(root)).encode(), path.read_bytes()]
    return _digest(*parts)


# -- layers ----------------------------------------------------------------------------


def _tar_layer(rootfs: Path, out: Path, skip: tuple[str, ...] = ()) -> None:
    """A deterministic layer of ``rootfs``: sorted, fixed times, owners kept, /dev empty."""
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        seen: dict[tuple[int, int], str] = {}
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            here = Path(dirpath)
            rel_dir = here.relative_to(rootfs)
            for name in sorted(dirnames) + sorted(filenames):
                path = here / name
                rel = str(rel_dir / name) if str(rel_dir) != "." else name
                if any(rel == s or rel.startswith(s + "/") for s in skip):
                    continue
                info = tar.gettarinfo(str(path), arcname=rel)
                if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
                    continue
                st = path.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        info = tarfile.TarInfo(rel)
                        info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                    else:
                        seen[key] = rel
                info.mtime, info.uname, info.gname = EPOCH, "", ""
                if info.isreg():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
            dirnames[:] = [
                d
                for d in dirnames
                if not any(str(rel_dir / d).lstrip("./") == s for s in ("dev", "proc", "sys"))
            ]
    tmp.rename(out)


def _compile(python: str, *directories: Path) -> None:
    """Bytecode that stays valid whatever the files' times (the root filesystem is read-only)."""
    subprocess.run(
        [
            python,
            "-m",
            "compileall",
            "-q",
            "-j0",
            "--invalidation-mode",
            "unchecked-hash",
            *(str(d) for d in directories),
        ],
        check=True,
        capture_output=True,
    )


def _base_layer(out: Path) -> None:
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError(
            "mmdebstrap not found: install Debian's mmdebstrap (scripts/host-packages)"
        )
    with tempfile.TemporaryDirectory(prefix="ds01-image-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "mmdebstrap",
                "--variant=extract",
                "--mode=root",
                "--quiet",
                f"--include={','.join(debian_packages())}",
                SUITE,
                str(rootfs),
                MIRROR,
            ],
            check=True,
        )
        for lean in LEAN:
            target = rootfs / lean
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        (rootfs / "tmp").chmod(0o1777)
        # No base-passwd: the extract variant installs only what Python needs.
        (rootfs / "etc" / "passwd").write_text(PASSWD)
        (rootfs / "etc" / "group").write_text(GROUP)
        (rootfs / SITE_PACKAGES).mkdir(parents=True, exist_ok=True)
        # The standard library's bytecode, by the image's own interpreter.
        subprocess.run(
            [
                "chroot",
                str(rootfs),
                f"/usr/bin/python{PYTHON}",
                "-m",
                "compileall",
                "-q",
                "-j0",
                "--invalidation-mode",
                "unchecked-hash",
                f"/usr/lib/python{PYTHON}",
            ],
            check=True,
            capture_output=True,
        )
        _tar_layer(rootfs, out)


def _same_python() -> bool:
    return f"{sys.version_info.major}.{sys.version_info.minor}" == PYTHON


def _pip_target(target: Path, *args: str) -> None:
    platforms = [f"--platform={p}" for p in PLATFORMS]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-compile",
            "--only-binary=:all:",
            f"--python-version={PYTHON}",
            "--implementation=cp",
            f"--abi=cp{PYTHON.replace('.', '')}",
            *platforms,
            f"--target={target}",
            *args,
        ],
        check=True,
    )
    shutil.rmtree(target / "bin", ignore_errors=True)


def _deps_layer(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ds01-image-deps-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        site = rootfs / SITE_PACKAGES
        _pip_target(site, "--require-hashes", "-r", str(recipe_dir() / "requirements.txt"))
        for path in pruned():
            shutil.rmtree(site / path)
        if _same_python():
            _compile(sys.executable, site)
        _tar_layer(rootfs, out)


def pruned() -> list[str]:
    """Paths under site-packages deleted after installing (`deploy/image/prune`)."""
    lines = (recipe_dir() / "prune").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _project_layer(out: Path) -> None:
    root = source_root()
    with tempfile.TemporaryDirectory(prefix="ds01-image-project-") as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(root / name, source / name)
        shutil.copytree(
            root / "controller",
            source / "controller",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        wheels = Path(tmp) / "wheels"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                f"--wheel-dir={wheels}",
                str(source),
            ],
            check=True,
        )
        rootfs = Path(tmp) / "rootfs"
        site = rootfs / SITE_PACKAGES
        _pip_target(site, *(str(w) for w in wheels.glob("*.whl")))
        if _same_python():
            _compile(sys.executable, site)
        bin_dir = rootfs / "usr" / "local" / "bin"
        bin_dir.mkdir(parents=True)
        for script in ENTRY_SCRIPTS:
            shutil.copy(recipe_dir() / "ds01", bin_dir / script)
            (bin_dir / script).chmod(0o755)
        _tar_layer(rootfs, out)


# -- the archive ------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_archive(out: Path, name: str, layers: list[Path], config: Mapping[str, object]) -> None:
    """A docker-archive (`docker save` format) of ``layers`` with ``config``."""
    diff_ids = [_sha256(layer) for layer in layers]
    body = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [
            {"created": "2023-11-14T22:13:20Z", "created_by": f"ds01 layer {i}"}
            for i in range(len(layers))
        ],
    }
    config_bytes = json.dumps(body, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [
        {"Config": config_name, "RepoTags": [name], "Layers": [f"{d}/layer.tar" for d in diff_ids]}
    ]
    tmp = out.with_suffix(".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

        def add_bytes(arcname: str, data: bytes) -> None:
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime = len(data), EPOCH
            tar.addfile(info, io.BytesIO(data))

        add_bytes(config_name, config_bytes)
        for digest, layer in zip(diff_ids, layers, strict=True):
            tar.add(str(layer), arcname=f"{digest}/layer.tar")
        add_bytes("manifest.json", json.dumps(manifest).encode())
    tmp.rename(out)


@dataclass(frozen=True)
class Image:
    """A built image: its name and docker-archive, and the key of its contents."""

    name: str
    archive: Path
    key: str

    @property
    def size_bytes(self) -> int:
        """Its layers' uncompressed size (what the node's disk holds)."""
        with tarfile.open(self.archive) as tar:
            return sum(m.size for m in tar.getmembers() if m.name.endswith("layer.tar"))


def _cached(path: Path, make: Callable[[Path], None]) -> Path:
    if not path.exists():
        print(f"building image layer {path.name} ...", file=sys.stderr)
        make(path)
    return path


def image_dir() -> Path:
    return cache_root() / "image"


def build(version: str = __version__) -> Image:
    """The project's image, built or taken from the cache (see the module docstring)."""
    cache = image_dir()
    cache.mkdir(parents=True, exist_ok=True)
    recipe = recipe_dir()
    base_key = _digest(
        SUITE.encode(),
        MIRROR.encode(),
        (recipe / "debian-packages").read_bytes(),
        PASSWD.encode(),
        GROUP.encode(),
        str(LEAN).encode(),
    )
    deps_key = _digest(
        base_key.encode(),
        (recipe / "requirements.txt").read_bytes(),
        (recipe / "prune").read_bytes(),
    )
    own_key = _digest(project_key().encode(), (recipe / "ds01").read_bytes())
    key = _digest(base_key.encode(), deps_key.encode(), own_key.encode(), version.encode())
    name = image_name(version)
    archive = cache / f"{NAME}-{version}-{key}.tar"
    with open(cache / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not archive.exists():
            layers = [
                _cached(cache / f"base-{base_key}.tar", _base_layer),
                _cached(cache / f"deps-{deps_key}.tar", _deps_layer),
                _cached(cache / f"project-{own_key}.tar", _project_layer),
            ]
            config = {
                "Entrypoint": ENTRYPOINT,
                "Cmd": ["--help"],
                "Env": ENV,
                "WorkingDir": "/",
                "Labels": {
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.title": NAME,
                },
            }
            write_archive(archive, name, layers, config)
            _prune(cache, keep={archive.name, *(p.name for p in layers)})
    return Image(name, archive, key)


def _prune(cache: Path, keep: set[str]) -> None:
    """Drop older archives and layers (each is tens of MB); keep the newest set."""
    for path in cache.glob("*.tar"):
        ours = path.name.startswith((f"{NAME}-", "base-", "deps-", "project-"))
        if ours and path.name not in keep:
            path.unlink(missing_ok=True)


def busybox_image() -> Image:
    """The pods' sandbox image: Debian's static busybox, `sleep infinity` (no registry)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not found: install Debian's busybox-static")
    key = _digest(Path(busybox).read_bytes(), " ".join(BUSYBOX_APPLETS).encode())
    name = BUSYBOX_NAME
    cache = image_dir()
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"busybox-{key}.tar"
    if not archive.exists():
        with tempfile.TemporaryDirectory(prefix="ds01-busybox-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            (rootfs / "bin").mkdir(parents=True)
            shutil.copy(busybox, rootfs / "bin" / "busybox")
            for applet in BUSYBOX_APPLETS:
                (rootfs / "bin" / applet).symlink_to("busybox")
            layer = Path(tmp) / "layer.tar"
            _tar_layer(rootfs, layer)
            write_archive(
                archive,
                name,
                [layer],
                {
                    "Entrypoint": ["/bin/sleep"],
                    "Cmd": ["infinity"],
                    "Env": ["PATH=/bin"],
                    "WorkingDir": "/",
                },
            )
    return Image(name, archive, key)


def main(argv: list[str] | None = None) -> int:
    """`python -m controller.devcluster.image [build|lock]`."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["lock"]:
        from controller.devcluster.imagelock import write_lock

        print(write_lock(recipe_dir() / "requirements.txt"))
        return 0
    image = build()
    print(f"{image.name}: {image.archive} ({image.size_bytes / 2**20:.0f} MiB uncompressed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
