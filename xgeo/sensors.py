"""The sensor registry: one entry per sensor, keyed by name.

Band names are the key a dataset uses to say which bands it carries (BigEarthNet's Sentinel-2 has 12 of the 13
bands: no B10). Central wavelengths let a model map the bands of a sensor it never saw onto the bands of one it
did (see ``xgeo.model.embed``). Adding a sensor is adding an entry to ``SENSORS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Band:
    name: str
    wavelength_nm: float | None = None  # central wavelength; None for SAR polarisations and heights
    gsd_m: float | None = None  # native ground sample distance of this band when it differs per band


@dataclass(frozen=True)
class Sensor:
    name: str
    title: str
    kind: str  # optical | sar | elevation
    bands: tuple[Band, ...]
    gsd_m: float | tuple[float, float]  # a number, or a (min, max) range for multi-source collections
    dtype: str  # dtype as stored on disk by the datasets that carry this sensor
    nodata: float | None
    units: str
    valid_range: tuple[float, float] | None  # values are clipped to this range before use (value convention)
    nan_value: float | None = None  # NaNs are replaced by this before clipping (SAR convention)
    notes: str = ""
    aliases: dict[str, str] = field(default_factory=dict)  # alternative band names -> canonical

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    def band(self, name: str) -> Band:
        name = self.aliases.get(name, name)
        for b in self.bands:
            if b.name == name:
                return b
        raise KeyError(f"sensor {self.name!r} has no band {name!r}; its bands are {list(self.band_names)}")

    def band_indices(self, names: Iterable[str]) -> list[int]:
        """Indices into this sensor's full band list of the named bands (raises naming the unknown band)."""
        canon = [self.aliases.get(n, n) for n in names]
        idx = []
        for n in canon:
            if n not in self.band_names:
                raise KeyError(f"sensor {self.name!r} has no band {n!r}; its bands are {list(self.band_names)}")
            idx.append(self.band_names.index(n))
        return idx


def _bands(spec: Sequence[tuple]) -> tuple[Band, ...]:
    return tuple(Band(*s) for s in spec)


# Sentinel-2 MSI (S2A central wavelengths, ESA SNAP band info); order as in SEN12MS GeoTIFFs.
_S2 = _bands(
    [
        ("B01", 442.7, 60.0), ("B02", 492.4, 10.0), ("B03", 559.8, 10.0), ("B04", 664.6, 10.0),
        ("B05", 704.1, 20.0), ("B06", 740.5, 20.0), ("B07", 782.8, 20.0), ("B08", 832.8, 10.0),
        ("B8A", 864.7, 20.0), ("B09", 945.1, 60.0), ("B10", 1373.5, 60.0), ("B11", 1613.7, 20.0),
        ("B12", 2202.4, 20.0),
    ]
)

SENSORS: dict[str, Sensor] = {
    s.name: s
    for s in [
        Sensor(
            name="rgb", title="RGB aerial and satellite imagery (multi-source)", kind="optical",
            bands=_bands([("R", 650.0), ("G", 550.0), ("B", 470.0)]),
            gsd_m=(0.1, 153.0), dtype="uint8", nodata=None, units="DN 0-255", valid_range=(0.0, 255.0),
            notes="GeoPile, MillionAID and the MDAS 3K camera; not one sensor but many (paper, Table 1, note a).",
            aliases={"red": "R", "green": "G", "blue": "B"},
        ),
        Sensor(
            name="s2", title="Sentinel-2 MSI L1C", kind="optical", bands=_S2, gsd_m=10.0, dtype="uint16",
            nodata=None, units="reflectance x 10000", valid_range=(0.0, 10000.0),
            notes="13 bands; BigEarthNet ships 12 (no B10).",
        ),
        Sensor(
            name="s1", title="Sentinel-1 C-band SAR (GRD)", kind="sar",
            bands=_bands([("VV", None), ("VH", None)]), gsd_m=10.0, dtype="float32", nodata=None,
            units="backscatter dB", valid_range=(-25.0, 0.0), nan_value=-25.0,
            notes="Official SEN12MS loader: nan_to_num then clip to [-25, 0] dB.",
        ),
        Sensor(
            name="dsm", title="Digital surface model", kind="elevation", bands=_bands([("height", None)]),
            gsd_m=(0.09, 0.3), dtype="float32", nodata=-9999.0, units="metres above reference",
            valid_range=None,
        ),
        Sensor(
            name="wv3_pan", title="WorldView-3 panchromatic", kind="optical", bands=_bands([("PAN", 625.0)]),
            gsd_m=0.31, dtype="uint16", nodata=0.0, units="DN (11-bit)", valid_range=(0.0, 2047.0),
            notes="450-800 nm; SpaceNet 2 PAN tiles are 650 x 650 px.",
        ),
        Sensor(
            name="wv3_mul", title="WorldView-3 multispectral (8 VNIR bands)", kind="optical",
            bands=_bands(
                [("coastal", 427.0), ("blue", 478.0), ("green", 546.0), ("yellow", 608.0), ("red", 659.0),
                 ("red_edge", 724.0), ("nir1", 833.0), ("nir2", 949.0)]
            ),
            gsd_m=1.24, dtype="uint16", nodata=0.0, units="DN (11-bit)", valid_range=(0.0, 2047.0),
            notes="SpaceNet 2 MUL tiles are 163 x 163 px; MUL-PanSharpen 650 x 650 (band order unconfirmed).",
        ),
        Sensor(
            name="irrg", title="ISPRS Vaihingen true orthophoto, false colour (IR-R-G)", kind="optical",
            bands=_bands([("NIR", 842.0), ("R", 650.0), ("G", 550.0)]), gsd_m=0.09, dtype="uint8",
            nodata=None, units="DN 0-255", valid_range=(0.0, 255.0),
        ),
    ]
}


def get_sensor(name: str) -> Sensor:
    try:
        return SENSORS[name]
    except KeyError:
        raise KeyError(f"unknown sensor {name!r}; the registry has {sorted(SENSORS)} (xgeo/sensors.py)") from None
