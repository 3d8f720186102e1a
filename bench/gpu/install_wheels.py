"""Install the wheels of WHEELS_DIR whose distribution this Python lacks into TARGET (put on PYTHONPATH).

    python bench/gpu/install_wheels.py WHEELS_DIR TARGET

A wheel is a zip laid out for site-packages: unpacking it is installing it (these wheels run no
scripts and build nothing), and it needs no pip, which the GPU machine's Python may lack. A
distribution that is already installed is left alone, whatever its version: the GPU machine's own
torch, transformers and numpy are the ones measured. Standard library only.
"""

import importlib.metadata
import sys
import zipfile
from pathlib import Path


def distribution_of(wheel: Path) -> str:
    return wheel.name.split('-')[0]  # {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def unpack(wheel: Path, target: Path) -> None:
    """Into ``target``; a wheel's ``<name>.data/purelib`` and ``platlib`` belong in site-packages
    too, its other .data folders (scripts, headers) are not needed to import it."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            parts = member.filename.split('/')
            if parts[0].endswith('.data'):
                if len(parts) < 3 or parts[1] not in ('purelib', 'platlib'):
                    continue
                parts = parts[2:]
            destination = target.joinpath(*parts)
            if member.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.read(member))


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    wheels, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(wheels.glob('*.whl')):
        distribution = distribution_of(wheel)
        if installed(distribution):
            print(f'{distribution}: installed already ({importlib.metadata.version(distribution)}), {wheel.name} not used')
            continue
        unpack(wheel, target)
        print(f'{distribution}: installed from {wheel.name} into {target}')


if __name__ == '__main__':
    main()
