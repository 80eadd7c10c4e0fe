"""Where things live. Relative paths in configs are taken from the project root, not the
current directory (Hydra 1.3 does not chdir, and make targets may run from anywhere)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"


def resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def write_atomic(path: Path, content: str | bytes | Callable) -> None:
    """Write a file through a temp file beside it and a rename: a kill mid-write leaves the old
    file or none, never half of one. `content` may be a writer called with the open binary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            if callable(content):
                content(out)
            else:
                out.write(content.encode() if isinstance(content, str) else content)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def replace_dir(staging: Path, target: Path) -> None:
    """Swap a fully written directory in for `target` (two renames; the old one removed after):
    readers see the old directory or the new one, never a half-written one."""
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


def conf_group(group: str, option: str = "default"):
    """conf/<group>/<option>.yaml as Hydra composes it under `group`, for the entry points that
    are not Hydra apps (`derivanim generate`, `derivanim serve` read conf/generate this way)."""
    from omegaconf import OmegaConf

    return OmegaConf.load(CONF_DIR / group / f"{option}.yaml")


def _register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


_register_resolver()
