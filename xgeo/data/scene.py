"""One latent scene per location, rendered into every sensor.

A :class:`Scene` is the ground truth of a place on a regular grid of ``gsd`` metres: a land-cover map (water,
broad-leaved and coniferous forest, low vegetation, cropland, bare soil, impervious ground, buildings, cars), the
height of objects above the ground (buildings, tree crowns, cars) and a terrain surface. Every synthetic sensor is a
rendering of the same scene, which is what makes co-located modalities agree the way real ones do:

- optical (Sentinel-2, WorldView-3, RGB, IRRG): per-class surface reflectance spectra interpolated at each band's
  central wavelength (water dark in the NIR, vegetation with a red edge, soil rising into the SWIR), modulated by a
  smooth within-class brightness field and per-object factors, darkened in cast shadows; Sentinel-2 L1C adds an
  atmospheric path reflectance that falls with wavelength; clouds and their shadows are a separate layer;
- SAR (Sentinel-1 VV/VH): per-class backscatter in dB, terrain-slope modulation, multiplicative gamma speckle;
- DSM: terrain + object heights.

Arrays are numpy, (H, W) for scene layers and (C, H, W) for renderings. Everything is vectorised except the
rasterisation of objects (one slice assignment per building, tree or car).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

CLASSES = ("water", "forest_broadleaf", "forest_coniferous", "low_vegetation", "cropland", "bare_soil",
           "impervious", "building", "car")
WATER, BROADLEAF, CONIFEROUS, LOW_VEG, CROPLAND, BARE, IMPERVIOUS, BUILDING, CAR = range(len(CLASSES))
FOREST = (BROADLEAF, CONIFEROUS)

# Surface reflectance (0-1) of each class at the Sentinel-2 band centres (nm); other sensors interpolate.
_NODES_NM = np.array([443, 492, 560, 665, 704, 740, 783, 833, 865, 945, 1374, 1614, 2202], dtype=np.float64)
_SPECTRA = np.array([
    # B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B10    B11    B12
    [0.055, 0.050, 0.045, 0.025, 0.020, 0.015, 0.012, 0.010, 0.009, 0.005, 0.001, 0.004, 0.002],  # water
    [0.025, 0.030, 0.060, 0.030, 0.090, 0.240, 0.310, 0.340, 0.350, 0.330, 0.003, 0.170, 0.080],  # broad-leaved
    [0.020, 0.025, 0.045, 0.022, 0.060, 0.160, 0.200, 0.220, 0.225, 0.210, 0.002, 0.110, 0.050],  # coniferous
    [0.035, 0.045, 0.090, 0.050, 0.130, 0.280, 0.350, 0.380, 0.390, 0.370, 0.004, 0.240, 0.120],  # low vegetation
    [0.045, 0.060, 0.095, 0.085, 0.140, 0.230, 0.270, 0.290, 0.300, 0.290, 0.004, 0.270, 0.170],  # cropland
    [0.080, 0.100, 0.140, 0.190, 0.210, 0.225, 0.235, 0.250, 0.260, 0.260, 0.005, 0.330, 0.280],  # bare soil
    [0.100, 0.105, 0.115, 0.125, 0.130, 0.135, 0.140, 0.145, 0.150, 0.150, 0.004, 0.170, 0.150],  # impervious
    [0.110, 0.120, 0.140, 0.180, 0.195, 0.205, 0.215, 0.225, 0.230, 0.230, 0.005, 0.270, 0.230],  # building roofs
    [0.150, 0.150, 0.150, 0.150, 0.150, 0.150, 0.150, 0.150, 0.150, 0.150, 0.004, 0.150, 0.150],  # car paint (grey)
])
# Leaf-off / dry vegetation: what green vegetation fades to outside the growing season (greenness 0).
_SENESCENT = np.array([0.050, 0.065, 0.090, 0.110, 0.140, 0.170, 0.190, 0.210, 0.220, 0.215, 0.004, 0.290, 0.210])
_CLOUD = np.array([0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.50, 0.49, 0.49, 0.45, 0.30, 0.35, 0.25])
# Top-of-atmosphere minus surface reflectance (Rayleigh and aerosol path reflectance) for L1C products.
_PATH = np.array([0.090, 0.065, 0.040, 0.020, 0.015, 0.012, 0.010, 0.008, 0.007, 0.004, 0.0005, 0.002, 0.001])

# C-band backscatter (dB) per class: VV, VH. Water is specular (dark), buildings double-bounce (bright).
_SIGMA0_DB = np.array([
    [-21.0, -27.0], [-7.5, -13.5], [-8.0, -14.0], [-11.0, -18.0], [-10.0, -17.0], [-13.0, -22.0],
    [-11.0, -19.0], [-1.5, -7.5], [-3.0, -10.0],
])


@dataclass(frozen=True)
class Cover:
    """Target land-cover fractions of a scene (they sum to 1 after normalisation) and its urban structure (metres)."""

    water: float = 0.1
    forest: float = 0.25
    low_vegetation: float = 0.2
    cropland: float = 0.3
    bare_soil: float = 0.05
    urban: float = 0.1
    coniferous: float = 0.5  # share of the forest that is coniferous
    block_m: float = 120.0  # street spacing in the urban part
    road_m: float = 7.0  # street width
    building_m: tuple[float, float] = (8.0, 25.0)  # footprint side
    height_m: tuple[float, float] = (4.0, 18.0)  # building height
    built: float = 0.35  # share of an urban block covered by buildings
    urban_green: float = 0.25  # share of the rest of an urban block that is lawn (and trees at fine GSD)
    relief_m: float = 30.0  # terrain standard deviation
    elevation_m: float = 300.0  # mean terrain height

    def fractions(self) -> np.ndarray:
        f = np.array([self.water, self.forest, self.low_vegetation, self.cropland, self.bare_soil, self.urban], float)
        return f / f.sum()


def random_cover(rng: np.random.Generator, **fixed) -> Cover:
    """A cover with Dirichlet-drawn fractions (so scenes differ in composition); ``fixed`` overrides fields."""
    w, fo, lv, cr, ba, ur = rng.dirichlet([0.6, 1.2, 1.0, 1.2, 0.3, 0.8])
    cover = Cover(water=w, forest=fo, low_vegetation=lv, cropland=cr, bare_soil=ba, urban=ur,
                  coniferous=float(rng.uniform(0, 1)), block_m=float(rng.uniform(70, 150)),
                  relief_m=float(rng.uniform(5, 60)), elevation_m=float(rng.uniform(50, 900)))
    return replace(cover, **fixed)


@dataclass
class Scene:
    """The ground truth of one location. All layers (H, W) on a grid of ``gsd`` metres."""

    classes: np.ndarray  # uint8 index into CLASSES
    height: np.ndarray  # float32 object height above ground (m): buildings, tree crowns, cars, crops
    terrain: np.ndarray  # float32 ground elevation (m)
    albedo: np.ndarray  # float32 brightness factor around 1: within-class texture, per-object variation
    gsd: float
    buildings: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # (N, 5) row0, row1, col0, col1, height

    @property
    def shape(self) -> tuple[int, int]:
        return self.classes.shape

    @property
    def surface(self) -> np.ndarray:
        """Digital surface: terrain + objects (H, W) float32 metres."""
        return self.terrain + self.height

    def fractions(self) -> np.ndarray:
        """Share of each class in the scene, (len(CLASSES),)."""
        return np.bincount(self.classes.ravel(), minlength=len(CLASSES)) / self.classes.size


# ------------------------------------------------------------------------------------------------ random fields
def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean, unit variance in expectation, (H, W) float64; sigma ``scale_px``.

    Filtered in the Fourier domain on a padded grid, cropped, so the field does not wrap around at the edges.
    Broad fields are drawn on a grid coarser by up to scale/4 and interpolated bilinearly (same look, far cheaper).
    """
    h, w = shape
    step = max(1, int(scale_px // 4))
    extra = 1 if step > 1 else 0  # one more coarse node so that interpolation covers the last pixel
    ch, cw, scale = -(-h // step) + extra, -(-w // step) + extra, scale_px / step
    pad = int(min(3 * scale, max(ch, cw)))
    ph, pw = ch + 2 * pad, cw + 2 * pad
    white = rng.standard_normal((ph, pw))
    fy = np.fft.fftfreq(ph)[:, None]
    fx = np.fft.rfftfreq(pw)[None, :]
    kernel = np.exp(-2.0 * (np.pi * scale) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(ph, pw))[pad:pad + ch, pad:pad + cw]
    if step > 1:
        field = _bilinear(field, np.arange(h) / step, np.arange(w) / step)
    # divide by the std the filter gives in expectation, not the sample's: a scene much smaller than the scale
    # then sits on a nearly constant value (one elevation), as a small part of a broad landscape does
    ky = np.exp(-2.0 * (np.pi * scale) ** 2 * np.fft.fftfreq(ph) ** 2)
    kx = np.exp(-2.0 * (np.pi * scale) ** 2 * np.fft.fftfreq(pw) ** 2)
    return field / np.sqrt(np.mean(ky**2) * np.mean(kx**2))


def _bilinear(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``grid`` (h, w) at fractional rows ``ys`` and columns ``xs`` -> (len(ys), len(xs))."""
    y0 = np.minimum(ys.astype(np.int64), grid.shape[0] - 2)
    x0 = np.minimum(xs.astype(np.int64), grid.shape[1] - 2)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
    bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _rough(rng: np.random.Generator, field: np.ndarray, scale_px: float, amount: float = 0.2) -> np.ndarray:
    """``field`` plus fine noise of ``amount`` times its spread in this scene: irregular, not straight, boundaries."""
    return field + amount * field.std() * smooth_noise(rng, field.shape, max(scale_px, 1.5))


def _top(field: np.ndarray, mask: np.ndarray, frac: float) -> np.ndarray:
    """The ``frac`` share of ``mask`` where ``field`` is highest (a threshold at a quantile), (H, W) bool."""
    if frac <= 0 or not mask.any():
        return np.zeros_like(mask)
    if frac >= 1:
        return mask.copy()
    return mask & (field >= np.quantile(field[mask], 1.0 - frac))


def _cuts(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """Sorted positions in [0, n) with gaps drawn uniformly in [lo, hi] pixels."""
    gaps = rng.uniform(max(lo, 1.0), max(hi, 1.0), size=int(n / max(lo, 1.0)) + 2)
    pos = np.cumsum(gaps) - rng.uniform(0, gaps[0])
    return pos[pos < n].astype(np.int64)


def _parcels(rng: np.random.Generator, shape: tuple[int, int], lo: float, hi: float) -> np.ndarray:
    """Rectangular field parcels: row bands, each cut into columns of its own, (H, W) int64 parcel ids."""
    h, w = shape
    row_of = np.searchsorted(_cuts(rng, h, lo, hi), np.arange(h), side="right")
    ids = np.empty(shape, np.int64)
    next_id = 0
    for band in range(row_of.max() + 1):
        rows = row_of == band
        col_of = np.searchsorted(_cuts(rng, w, lo, hi), np.arange(w), side="right")
        ids[rows] = next_id + col_of[None, :]
        next_id += col_of.max() + 1
    return ids


def _lines(rng: np.random.Generator, n: int, spacing: float, width: float) -> np.ndarray:
    """A 1-D mask of street lines of ``width`` px about every ``spacing`` px, (n,) bool."""
    mask = np.zeros(n, bool)
    half = max(width / 2, 0.5)
    for c in _cuts(rng, n, 0.8 * spacing, 1.2 * spacing):
        mask[max(0, int(c - half)):int(np.ceil(c + half))] = True
    return mask


# ------------------------------------------------------------------------------------------------------- scene
def make_scene(rng: np.random.Generator, shape: tuple[int, int], gsd: float, cover: Cover | None = None) -> Scene:
    """Draw one latent scene of ``shape`` (H, W) pixels of ``gsd`` metres with the given land-cover fractions.

    Water fills the lowest ground; the urban part is a street grid with buildings (and, at fine GSD, trees and
    cars); the rural part is forest blobs and rectangular parcels of cropland, low vegetation and bare soil.
    """
    cover = cover or Cover()
    h, w = shape
    px = 1.0 / gsd  # pixels per metre
    f_water, f_forest, f_low, f_crop, f_bare, f_urban = cover.fractions()

    terrain_n = smooth_noise(rng, shape, 600 * px)
    yy, xx = np.mgrid[0:h, 0:w] * gsd
    tilt = rng.normal(0, 0.01, size=2)  # a regional slope of about 1 %
    terrain = cover.elevation_m + cover.relief_m * terrain_n + tilt[0] * yy + tilt[1] * xx

    classes = np.full(shape, LOW_VEG, np.uint8)
    height = np.zeros(shape, np.float32)
    albedo = 1.0 + 0.08 * smooth_noise(rng, shape, 30 * px) + 0.04 * smooth_noise(rng, shape, max(3 * px, 0.7))

    everything = np.ones(shape, bool)
    # water lies in the lowest ground; the noise keeps shores irregular
    water = _top(_rough(rng, -(terrain_n + 0.5 * smooth_noise(rng, shape, 60 * px)), 8 * px), everything, f_water)
    land = ~water
    urban = _top(_rough(rng, smooth_noise(rng, shape, 400 * px), 10 * px), land, f_urban / max(1 - f_water, 1e-9))
    rural = land & ~urban
    rural_share = max(1 - f_water - f_urban, 1e-9)
    forest = _top(_rough(rng, smooth_noise(rng, shape, 150 * px), 6 * px), rural, f_forest / rural_share)
    coniferous = _top(smooth_noise(rng, shape, 300 * px), forest, cover.coniferous)
    open_land = rural & ~forest

    # parcels: each gets one of low vegetation / cropland / bare soil and a brightness of its own
    parcel = _parcels(rng, shape, 80 * px, 300 * px)
    n_parcels = int(parcel.max()) + 1
    p = np.array([f_low, f_crop, f_bare]) + 1e-9
    parcel_class = np.array([LOW_VEG, CROPLAND, BARE], np.uint8)[rng.choice(3, size=n_parcels, p=p / p.sum())]
    parcel_albedo = rng.uniform(0.85, 1.15, size=n_parcels)
    classes[open_land] = parcel_class[parcel[open_land]]
    albedo[open_land] *= parcel_albedo[parcel[open_land]]
    height[open_land & (classes == CROPLAND)] = 0.5

    classes[water] = WATER
    classes[forest] = BROADLEAF
    classes[coniferous] = CONIFEROUS
    canopy = 20.0 + 3.0 * smooth_noise(rng, shape, 80 * px) + 2.0 * smooth_noise(rng, shape, max(2.5 * px, 0.7))
    height[forest] = np.clip(canopy[forest], 5.0, 35.0)

    # streets: a grid inside the urban part, plus one through-road each way across the scene
    road_rows = _lines(rng, h, cover.block_m * px, cover.road_m * px)
    road_cols = _lines(rng, w, cover.block_m * px, cover.road_m * px)
    through = np.zeros(shape, bool)
    r0, c0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    half = max(cover.road_m * px / 2, 0.5)
    through[max(0, int(r0 - half)):int(np.ceil(r0 + half)), :] = True
    through[:, max(0, int(c0 - half)):int(np.ceil(c0 + half))] = True
    road = (urban & (road_rows[:, None] | road_cols[None, :])) | (through & land)
    horizontal = road_rows[:, None] | (np.abs(np.arange(h) - r0) <= half)[:, None]

    # buildings: rectangles dropped on urban ground, clipped by the streets
    lot = urban & ~road
    bmask = np.zeros(shape, bool)
    footprints = []
    if lot.any():
        lo, hi = cover.building_m
        mean_fp = ((lo + hi) / 2 * px) ** 2
        expected = min(cover.built * lot.sum() / max(mean_fp, 1.0), 4000.0)
        # stochastic rounding keeps the built share right on average; urban ground has at least one building
        n_b = max(int(expected) + int(rng.random() < expected % 1), int(cover.built > 0))
        centres = rng.choice(np.flatnonzero(lot), size=n_b) if n_b else np.zeros(0, np.int64)
        sides = rng.uniform(lo, hi, size=(n_b, 2)) * px
        heights = rng.uniform(*cover.height_m, size=n_b)
        roof = rng.uniform(0.7, 1.3, size=n_b)
        for (cy, cx), (sy, sx), bh, ra in zip(np.column_stack(np.unravel_index(centres, shape)), sides, heights, roof):
            ys = slice(max(0, int(cy - sy / 2)), int(cy + sy / 2) + 1)
            xs = slice(max(0, int(cx - sx / 2)), int(cx + sx / 2) + 1)
            bmask[ys, xs] = True
            height[ys, xs] = np.maximum(height[ys, xs], bh)
            albedo[ys, xs] = ra
            footprints.append((ys.start, min(ys.stop, h), xs.start, min(xs.stop, w), bh))
    building = bmask & lot
    height[urban & ~building] = 0.0
    classes[urban] = IMPERVIOUS
    classes[building] = BUILDING

    # the rest of a block: lawns (and trees where the GSD resolves crowns), the remainder paved
    yard = lot & ~building
    lawn = _top(smooth_noise(rng, shape, 15 * px), yard, cover.urban_green)
    classes[lawn] = LOW_VEG
    if gsd <= 2.0 and yard.any():
        n_t = int(min(0.08 * lawn.sum() / (12 * px * px + 1), 3000))
        spots = np.column_stack(np.unravel_index(rng.choice(np.flatnonzero(yard), size=n_t), shape))
        for cy, cx in spots:
            r = rng.uniform(2.0, 5.0) * px
            crown = rng.uniform(6.0, 15.0)
            ys = slice(max(0, int(cy - r)), min(h, int(cy + r) + 1))
            xs = slice(max(0, int(cx - r)), min(w, int(cx + r) + 1))
            dy, dx = np.ogrid[ys, xs]
            d2 = ((dy - cy) ** 2 + (dx - cx) ** 2) / (r * r)
            disk = (d2 <= 1.0) & ~building[ys, xs]
            classes[ys, xs][disk] = BROADLEAF
            height[ys, xs][disk] = np.maximum(height[ys, xs][disk], (crown * (1.0 - 0.5 * d2))[disk])
    classes[road] = IMPERVIOUS
    height[road] = 0.0
    albedo[road] = 1.0 + 0.03 * (albedo[road] - 1.0)

    # cars on the streets, aligned with them, where the GSD resolves a car (4.5 m x 1.9 m)
    if gsd <= 0.6 and road.any():
        n_c = int(min(road.sum() * gsd * gsd / 200.0, 400))  # about one car per 30 m of street
        paint = rng.choice([0.25, 0.6, 1.0, 1.8, 2.5], size=n_c)
        spots = np.column_stack(np.unravel_index(rng.choice(np.flatnonzero(road), size=n_c), shape))
        for (cy, cx), a in zip(spots, paint):
            ly, lx = (1.9, 4.5) if horizontal[cy, 0] else (4.5, 1.9)
            ys = slice(max(0, int(cy - ly * px / 2)), int(cy + ly * px / 2) + 1)
            xs = slice(max(0, int(cx - lx * px / 2)), int(cx + lx * px / 2) + 1)
            on_road = road[ys, xs]
            classes[ys, xs][on_road] = CAR
            height[ys, xs][on_road] = 1.5
            albedo[ys, xs][on_road] = a
    return Scene(classes=classes, height=height.astype(np.float32), terrain=terrain.astype(np.float32),
                 albedo=np.clip(albedo, 0.2, 3.0).astype(np.float32), gsd=float(gsd),
                 buildings=np.array(footprints, dtype=np.float64).reshape(-1, 5))


def crop(scene: Scene, rows: slice, cols: slice) -> Scene:
    """The part of a scene under a window (a patch of a larger tile)."""
    return Scene(scene.classes[rows, cols], scene.height[rows, cols], scene.terrain[rows, cols],
                 scene.albedo[rows, cols], scene.gsd)  # footprints are not carried into a crop


# --------------------------------------------------------------------------------------------------- rendering
def class_spectra(wavelengths_nm, greenness: float = 1.0) -> np.ndarray:
    """Surface reflectance of each class at the given wavelengths, (len(CLASSES), C) float64.

    ``greenness`` in [0, 1] is the phenological state: 1 at the peak of the season, 0 leaf-off or dry; broad-leaved
    forest, low vegetation and cropland fade towards a senescent spectrum, coniferous forest much less.
    """
    wl = np.asarray(wavelengths_nm, dtype=np.float64)
    table = np.stack([np.interp(wl, _NODES_NM, s) for s in _SPECTRA])
    dry = np.interp(wl, _NODES_NM, _SENESCENT)
    fade = ((BROADLEAF, greenness), (LOW_VEG, greenness), (CROPLAND, greenness), (CONIFEROUS, 0.8 + 0.2 * greenness))
    for k, g in fade:
        table[k] = g * table[k] + (1 - g) * dry
    return table


def cast_shadows(scene: Scene, azimuth_deg: float = 135.0, elevation_deg: float = 45.0) -> np.ndarray:
    """Cast shadows under a sun at an azimuth (clockwise from north) and an elevation, (H, W) bool.

    A pixel is shadowed when some pixel towards the sun rises above the sun ray through it. Checked at up to 48
    distances along the ray (vectorised shifts), enough for building and tree shadows.
    """
    surface = scene.surface
    h, w = surface.shape
    rise = np.tan(np.radians(elevation_deg)) * scene.gsd  # metres the ray climbs per pixel
    reach = int(np.ceil(float(scene.height.max()) / rise)) if scene.height.max() > 0 else 0
    shadow = np.zeros((h, w), bool)
    if reach == 0:
        return shadow
    az = np.radians(azimuth_deg)
    dy, dx = -np.cos(az), np.sin(az)  # towards the sun in (row, col); north is up
    for s in np.unique(np.linspace(1, reach, num=min(reach, 48)).round().astype(int)):
        oy, ox = int(round(dy * s)), int(round(dx * s))
        if abs(oy) >= h or abs(ox) >= w:
            break
        src = surface[max(0, oy):h + min(0, oy), max(0, ox):w + min(0, ox)]
        dst = (slice(max(0, -oy), h + min(0, -oy)), slice(max(0, -ox), w + min(0, -ox)))
        shadow[dst] |= src - s * rise > surface[dst] + 0.5
    return shadow


def reflectance(scene: Scene, wavelengths_nm, greenness: float = 1.0, shadow: np.ndarray | None = None) -> np.ndarray:
    """Surface reflectance at the given band centres, (C, H, W) float32; shadows keep 35 % (skylight)."""
    refl = class_spectra(wavelengths_nm, greenness).astype(np.float32)[scene.classes]  # (H, W, C)
    light = scene.albedo if shadow is None else scene.albedo * np.where(shadow, 0.35, 1.0).astype(np.float32)
    return np.moveaxis(refl * light[..., None], -1, 0)


def path_reflectance(wavelengths_nm) -> np.ndarray:
    """Atmospheric path reflectance added in top-of-atmosphere (L1C) products, (C,)."""
    return np.interp(np.asarray(wavelengths_nm, float), _NODES_NM, _PATH)


def cloud_spectrum(wavelengths_nm) -> np.ndarray:
    """Top-of-atmosphere reflectance of a thick cloud, (C,)."""
    return np.interp(np.asarray(wavelengths_nm, float), _NODES_NM, _CLOUD)


def cloud_layer(rng: np.random.Generator, shape: tuple[int, int], gsd: float, coverage: float,
                shift_m: float = 400.0, azimuth_deg: float = 150.0) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity and cloud-shadow strength, both (H, W) float32 in [0, 1].

    Clouds are a thresholded multi-scale field with soft edges; their shadow is the same field displaced by
    ``shift_m`` away from the sun (cloud height x tan of the sun zenith angle).
    """
    px = 1.0 / gsd
    pad = int(np.ceil(shift_m * px))
    big = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    field = (smooth_noise(rng, big, 300 * px) + 0.35 * smooth_noise(rng, big, 60 * px)
             + 0.15 * smooth_noise(rng, big, max(15 * px, 0.7)))
    t = np.quantile(field, 1.0 - float(np.clip(coverage, 0.0, 1.0)))
    alpha = np.clip((field - t) / (0.3 * field.std() + 1e-9), 0.0, 1.0) ** 0.7  # soft edges, opaque cores
    az = np.radians(azimuth_deg)
    oy, ox = int(round(np.cos(az) * pad)), int(round(-np.sin(az) * pad))
    inner = (slice(pad, pad + shape[0]), slice(pad, pad + shape[1]))
    shade = alpha[pad + oy:pad + oy + shape[0], pad + ox:pad + ox + shape[1]]
    return alpha[inner].astype(np.float32), shade.astype(np.float32)


def sar_backscatter(scene: Scene, rng: np.random.Generator, looks: float = 4.4,
                    greenness: float = 1.0) -> np.ndarray:
    """Sentinel-1 sigma0 VV and VH in dB, (2, H, W) float32, with gamma speckle of ``looks`` equivalent looks.

    Slopes facing the sensor (looking east, as on an ascending pass) are brighter; wind roughens water; leaf-off
    vegetation scatters less in VH.
    """
    sigma = _SIGMA0_DB[scene.classes].astype(np.float64)  # (H, W, 2)
    veg = np.isin(scene.classes, (BROADLEAF, LOW_VEG, CROPLAND))
    sigma[veg, 1] -= 2.0 * (1.0 - greenness)
    slope = np.gradient(scene.terrain.astype(np.float64), scene.gsd, axis=1)
    sigma += np.clip(-10.0 * slope, -4.0, 4.0)[..., None]
    water = scene.classes == WATER
    wind = 2.0 * smooth_noise(rng, scene.shape, max(200 / scene.gsd, 1.0))
    sigma[water] += wind[water][:, None]
    sigma += 0.8 * smooth_noise(rng, scene.shape, max(20 / scene.gsd, 0.7))[..., None]
    linear = 10.0 ** (sigma / 10.0) * rng.gamma(looks, 1.0 / looks, size=sigma.shape)
    return np.moveaxis(10.0 * np.log10(linear), -1, 0).astype(np.float32)


def dsm(scene: Scene, rng: np.random.Generator, noise_m: float = 0.05) -> np.ndarray:
    """Digital surface model (terrain + buildings + trees + cars) in metres, (1, H, W) float32."""
    return (scene.surface + rng.normal(0.0, noise_m, size=scene.shape))[None].astype(np.float32)


# ----------------------------------------------------------------------------------------- sensor value scales
def to_s2(refl: np.ndarray, rng: np.random.Generator, noise: float = 0.002) -> np.ndarray:
    """Reflectance (C, H, W) -> Sentinel-2 digital numbers, reflectance x 10000 in [0, 10000], uint16."""
    dn = (refl + rng.normal(0.0, noise, size=refl.shape)) * 10000.0
    return np.clip(np.rint(dn), 0, 10000).astype(np.uint16)


def to_uint8(refl: np.ndarray, white: float = 0.45, gamma: float = 2.2) -> np.ndarray:
    """Reflectance (C, H, W) -> 8-bit display values of a camera (gamma-encoded), uint8."""
    return np.rint(255.0 * np.clip(refl / white, 0.0, 1.0) ** (1.0 / gamma)).astype(np.uint8)


def to_wv3(refl: np.ndarray, rng: np.random.Generator, gain: float = 2000.0, offset: float = 40.0) -> np.ndarray:
    """Reflectance (C, H, W) -> WorldView-3 11-bit digital numbers in [1, 2047] (0 is nodata), uint16."""
    dn = refl * gain + offset + rng.normal(0.0, 2.0, size=refl.shape)
    return np.clip(np.rint(dn), 1, 2047).astype(np.uint16)


def block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Area-average (..., H, W) by ``factor`` in both axes -> (..., H // factor, W // factor) float64."""
    h, w = x.shape[-2] // factor * factor, x.shape[-1] // factor * factor
    x = x[..., :h, :w].astype(np.float64)
    return x.reshape(*x.shape[:-2], h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def block_mode(labels: np.ndarray, factor: int, n_classes: int) -> np.ndarray:
    """Majority label over ``factor`` x ``factor`` blocks, repeated back to (H, W) (a coarse map on a fine grid)."""
    h, w = labels.shape
    hb, wb = -(-h // factor), -(-w // factor)
    padded = np.pad(labels, ((0, hb * factor - h), (0, wb * factor - w)), mode="edge")
    blocks = padded.reshape(hb, factor, wb, factor).transpose(0, 2, 1, 3).reshape(hb, wb, -1)
    counts = (blocks[..., None] == np.arange(n_classes)).sum(axis=2)
    mode = counts.argmax(axis=-1).astype(labels.dtype)
    return np.repeat(np.repeat(mode, factor, axis=0), factor, axis=1)[:h, :w]
