"""The dataset catalog: one entry per dataset, keyed by id.

Each entry states as data what TorchGeo states at the top of a dataset module: where the files come from
(URL, archive name, md5), how they lie on disk, which modalities (sensor + bands) a sample has, which modalities
are co-located pairs, and how the splits are defined. Code that reads a layout lives in ``xgeo.data.readers``;
code that writes a synthetic copy of a layout lives in ``xgeo.data.synth``. Both look entries up here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .sensors import SENSORS

_S2_ALL = SENSORS["s2"].band_names
_S2_BEN = tuple(b for b in _S2_ALL if b != "B10")
_SEN12MS_SEASONS = ("1158_spring", "1868_summer", "1970_fall", "2017_winter")


@dataclass(frozen=True)
class Source:
    """One file to fetch. ``manual`` sources sit behind a login or a form: the user places them by hand."""

    url: str | None
    filename: str  # name under DIR once fetched
    md5: str | None = None
    extract: bool = True
    manual: bool = False
    instructions: str = ""


@dataclass(frozen=True)
class Modality:
    """One image of a sample: a sensor and the bands this dataset carries, in on-disk order."""

    sensor: str
    bands: tuple[str, ...]

    def __post_init__(self) -> None:
        SENSORS[self.sensor].band_indices(self.bands)  # fails loudly on a typo


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    title: str
    citation: str
    role: str  # pretrain | downstream
    task: str | None  # None for pretraining sets; classification | segmentation | cloud_removal | pansharpening
    modalities: dict[str, Modality]  # modality key in the Zarr store -> sensor and bands
    pairs: tuple[tuple[str, str], ...]  # co-located modality pairs (cross-sensor reconstruction)
    sources: tuple[Source, ...]
    layout: str  # the on-disk layout, as a reader expects it under RAW_DIR
    splits: str  # how splits are defined
    license: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def sensors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.sensor for m in self.modalities.values()))

    @property
    def manual(self) -> bool:
        return any(s.manual for s in self.sources)


def _mod(sensor: str, bands=None) -> Modality:
    return Modality(sensor, tuple(bands) if bands is not None else SENSORS[sensor].band_names)


_SEN12MS_MD5 = {
    "lc": ("6e2e8fa8b8cba77ddab49fd20ff5c37b", "2c5bd80244440b6f9d54957c6b1f23d4", "9b126a68b0e3af260071b3139cb57cee", "0fa0420ef7bcfe4387c7e6fe226dc728"),
    "s1": ("fba019bb27a08c1db96b31f718c34d79", "01044b7f58d33570c6b57fec28a3d449", "19132e0aab9d4d6862fd42e8e6760847", "bb8cbfc16b95a4f054a3d5380e0130ed"),
    "s2": ("d58af2c15a16f376eb3308dc9b685af2", "4dbaf72ecb704a4794036fe691427ff3", "b8f117818878da86b5f5e06400eb1866", "3807545661288dcca312c9c538537b63"),
}
_SEN12MS_SPLITS = "https://raw.githubusercontent.com/schmitt-muc/SEN12MS/3a41236a28d08d253ebe2fa1a081e5e32aa7eab4/splits/"

CATALOG: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.id in CATALOG:
        raise ValueError(f"dataset {spec.id!r} registered twice")
    for a, b in spec.pairs:
        if a not in spec.modalities or b not in spec.modalities:
            raise ValueError(f"dataset {spec.id!r}: pair ({a}, {b}) names a modality it does not have")
    CATALOG[spec.id] = spec
    return spec


register(DatasetSpec(
    id="geopile", title="GeoPile (GFM pretraining corpus, about 600K RGB images)",
    citation="Mendieta et al., GFM: Building Geospatial Foundation Models via Continual Pretraining, ICCV 2023",
    role="pretrain", task=None, modalities={"rgb": _mod("rgb")}, pairs=(),
    sources=(
        Source(None, "GeoPileV0", manual=True, extract=False, instructions=(
            "GeoPile is distributed by the GFM authors as a OneDrive share linked from the README of "
            "github.com/mmendiet/GFM (no checksums published). Download it and unpack it so that "
            "DIR/GeoPileV0/<source>/<class>/<image> exists (sources: NAIP, RSD46-WHU, MLRSNet, RESISC45, PatternNet).")),
        Source("https://hf.co/datasets/isaaccorley/resisc45/resolve/883edc0eee77b2c84225472f10f126e3ed83fa6e/NWPU-RESISC45.zip",
               "NWPU-RESISC45.zip", "75206b2e16446591afa88e2628744886", manual=False,
               instructions="optional part with a stable mirror: RESISC45"),
        Source("https://hf.co/datasets/torchgeo/PatternNet/resolve/2dbd901b00e301967a5c5146b25454f5d3455ad0/PatternNet.zip",
               "PatternNet.zip", "96d54b3224c5350a98d55d5a7e6984ad", manual=False,
               instructions="optional part with a stable mirror: PatternNet"),
    ),
    layout="GeoPileV0/<source>/<class>/<image>.{jpg,png,tif} (torchvision ImageFolder per source), RGB",
    splits="all images are pretraining data (split 'train')",
    notes="Sizes vary by source; images are resized to the tile size.",
))

register(DatasetSpec(
    id="millionaid", title="Million-AID (about 1M RGB scene images)",
    citation="Long et al., On Creating Benchmark Dataset for Aerial Image Interpretation, IEEE JSTARS 14, 2021",
    role="pretrain", task=None, modalities={"rgb": _mod("rgb")}, pairs=(),
    sources=(
        Source(None, "train.zip", "1b40503cafa9b0601653ca36cd788852", manual=True, instructions=(
            "Million-AID is distributed through captain-whu.github.io/DiRS (cloud-drive links). Download train.zip and "
            "test.zip into DIR; they are verified against their md5 and extracted to DIR/train and DIR/test.")),
        Source(None, "test.zip", "51a63ee3eeb1351889eacff349a983d8", manual=True, instructions="see train.zip"),
    ),
    layout="<split>/<L1>/<L2>/<L3>/*.jpg or <split>/<L1>/<L3>/*.jpg; the leaf folder is one of 51 classes; JPEG",
    splits="train and test archives; both are used for pretraining",
))

register(DatasetSpec(
    id="sen12ms", title="SEN12MS (180,662 co-located Sentinel-1 / Sentinel-2 / land-cover triplets)",
    citation="Schmitt et al., SEN12MS, ISPRS Annals IV-2/W7, 2019",
    role="pretrain", task=None,
    modalities={"s1": _mod("s1"), "s2": _mod("s2")}, pairs=(("s1", "s2"),),
    sources=tuple(
        Source(f"https://dataserv.ub.tum.de/s/m1474000/download?path=/&files=ROIs{season}_{kind}.tar.gz",
               f"ROIs{season}_{kind}.tar.gz", _SEN12MS_MD5[kind][i])
        for kind in ("s1", "s2") for i, season in enumerate(_SEN12MS_SEASONS)
    ) + (
        Source(_SEN12MS_SPLITS + "train_list.txt", "splits/train_list.txt", "0a68d4e1eb24f128fccdb930000b2546", extract=False),
        Source(_SEN12MS_SPLITS + "test_list.txt", "splits/test_list.txt", "c7faad064001e646445c4c634169484d", extract=False),
    ),
    layout="ROIs{season}/{s1,s2}_<scene>/ROIs{season}_{s1,s2}_<scene>_p<n>.tif; the s1 pair of an s2 file swaps _s2_ for _s1_",
    splits="splits/train_list.txt and splits/test_list.txt list s2 file names (pretraining uses both)",
    license="CC-BY-4.0",
    extra={"seasons": _SEN12MS_SEASONS, "lc_md5": _SEN12MS_MD5["lc"]},
))

register(DatasetSpec(
    id="mdas", title="MDAS (Augsburg multimodal benchmark: 3K DSM and RGB used here)",
    citation="Hu et al., MDAS: a new multimodal benchmark dataset for remote sensing, ESSD 15:113, 2023",
    role="pretrain", task=None,
    modalities={"rgb": _mod("rgb"), "dsm": _mod("dsm")}, pairs=(("rgb", "dsm"),),
    sources=(
        Source("https://huggingface.co/datasets/torchgeo/mdas/resolve/860226b74269f1cf1bed8ea3c03f571ae701144c/Augsburg_data_4_publication.zip",
               "Augsburg_data_4_publication.zip", "7b63c26e3717cb52c6ba47d215f18d5b"),
    ),
    layout="Augsburg_data_4_publication/{sub_area_1,sub_area_2,sub_area_3,...}/{3K_RGB.tif,3K_DSM.tif,...}; "
           "3K_RGB 4 x uint8 (R,G,B + a fourth band, dropped), 3K_DSM 1 x float32, same area at different pixel sizes",
    splits="all sub areas are pretraining data; RGB and DSM are resampled to one grid, tiled and resized",
    license="CC-BY-SA-4.0",
))

register(DatasetSpec(
    id="bigearthnet", title="BigEarthNet-MM v1 (Sentinel-1 + Sentinel-2, 19-class multi-label)",
    citation="Sumbul et al., BigEarthNet, IGARSS 2019; Sumbul et al., BigEarthNet-MM, IEEE GRSM 2021",
    role="downstream", task="classification",
    modalities={"s1": _mod("s1"), "s2": _mod("s2", _S2_BEN)}, pairs=(("s1", "s2"),),
    sources=(
        Source("https://zenodo.org/records/12687186/files/BigEarthNet-S1-v1.0.tar.gz", "BigEarthNet-S1-v1.0.tar.gz", "94ced73440dea8c7b9645ee738c5a172"),
        Source("https://zenodo.org/records/12687186/files/BigEarthNet-S2-v1.0.tar.gz", "BigEarthNet-S2-v1.0.tar.gz", "5a64e9ce38deb036a435a7b59494924c"),
    ) + tuple(
        Source(f"https://git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models/-/raw/9a5be07346ab0884b2d9517475c27ef9db9b5104/splits/{s}.csv?inline=false",
               f"splits/{s}.csv", md5, extract=False)
        for s, md5 in (("train", "623e501b38ab7b12fe44f0083c00986d"), ("val", "22efe8ed9cbd71fa10742ff7df2b7978"), ("test", "697fb90677e30571b9ac7699b7e5b432"))
    ),
    layout="BigEarthNet-v1.0/<S2>/<S2>_{B01..B12 without B10}.tif (uint16, 120/60/20 px for 10/20/60 m) + "
           "<S2>_labels_metadata.json; BigEarthNet-S1-v1.0/<S1>/<S1>_{VV,VH}.tif + <S1>_labels_metadata.json "
           "(corresponding_s2_patch); splits/{train,val,test}.csv with 'S2name,S1name' lines",
    splits="official train/val/test csv (cloud and snow patches removed); fractions of train are seeded subsets",
    license="CDLA-Permissive-1.0",
    extra={
        # names as written in <patch>_labels_metadata.json (CORINE level 3 as used by BigEarthNet v1), index order
        "labels43": (
            "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
            "Road and rail networks and associated land", "Port areas", "Airports", "Mineral extraction sites",
            "Dump sites", "Construction sites", "Green urban areas", "Sport and leisure facilities",
            "Non-irrigated arable land", "Permanently irrigated land", "Rice fields", "Vineyards",
            "Fruit trees and berry plantations", "Olive groves", "Pastures", "Annual crops associated with permanent crops",
            "Complex cultivation patterns",
            "Land principally occupied by agriculture, with significant areas of natural vegetation",
            "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest", "Natural grassland",
            "Moors and heathland", "Sclerophyllous vegetation", "Transitional woodland/shrub", "Beaches, dunes, sands",
            "Bare rock", "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes",
            "Salines", "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons", "Estuaries",
            "Sea and ocean",
        ),
        # the 19-class nomenclature of BigEarthNet-MM (Sumbul et al., 2021), index order
        "labels19": (
            "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
            "Complex cultivation patterns",
            "Land principally occupied by agriculture, with significant areas of natural vegetation",
            "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
            "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
            "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands",
            "Inland waters", "Marine waters",
        ),
        # 43-class nomenclature index -> 19-class index (None: dropped); authoritative: rsim label_indices.json
        "labels43_to_19": {0: 0, 1: 0, 2: 1, 11: 2, 12: 2, 13: 2, 14: 3, 15: 3, 16: 3, 18: 3, 17: 4, 19: 5, 20: 6, 21: 7,
                           22: 8, 23: 9, 24: 10, 25: 11, 31: 11, 26: 12, 27: 12, 28: 13, 29: 14, 33: 15, 34: 15, 35: 16,
                           36: 16, 38: 17, 39: 17, 40: 18, 41: 18, 42: 18},
    },
))

register(DatasetSpec(
    id="vaihingen", title="ISPRS 2D semantic labelling, Vaihingen (IRRG true orthophoto + DSM)",
    citation="Rottensteiner et al., The ISPRS benchmark on urban object classification and 3D building reconstruction, 2012",
    role="downstream", task="segmentation",
    modalities={"irrg": _mod("irrg"), "dsm": _mod("dsm")}, pairs=(("irrg", "dsm"),),
    sources=(
        Source(None, "ISPRS_semantic_labeling_Vaihingen.zip", "462b8dca7b6fa9eaf729840f0cdfc7f3", manual=True, instructions=(
            "Request the Vaihingen data through the ISPRS data request form (www.isprs.org, 2D semantic labelling "
            "benchmark) and place the archives in DIR.")),
        Source(None, "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip", "4802dd6326e2727a352fb735be450277", manual=True,
               instructions="from the same ISPRS request"),
        Source(None, "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip", None, manual=True,
               instructions="eroded ground truth (boundary pixels ignored in scoring), from the same ISPRS request; optional"),
    ),
    layout="top/top_mosaic_09cm_area{N}.tif (IRRG uint8), dsm/dsm_09cm_matching_area{N}.tif (float32), "
           "gts_for_participants/top_mosaic_09cm_area{N}.tif (colour-coded labels), "
           "gts_eroded_for_participants/top_mosaic_09cm_area{N}_noBoundary.tif (eroded labels, optional)",
    splits="train areas 1,3,5,7,11,13,15,17,21,23,26,28,30,32,34,37; test areas 2,4,6,8,10,12,14,16,20,22,24,27,29,31,33,35,38",
    extra={
        "classes": ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"),
        "colours": ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
        "train_areas": (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37),
        "test_areas": (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38),
    },
))

register(DatasetSpec(
    id="sen12ms-cr", title="SEN12MS-CR (Sentinel-1 + cloudy Sentinel-2 -> cloud-free Sentinel-2)",
    citation="Ebel et al., Multisensor Data Fusion for Cloud Removal in Global and All-Season Sentinel-2 Imagery, IEEE TGRS 2020",
    role="downstream", task="cloud_removal",
    modalities={"s1": _mod("s1"), "s2_cloudy": _mod("s2"), "s2": _mod("s2")}, pairs=(("s1", "s2"),),
    sources=tuple(
        Source(f"https://dataserv.ub.tum.de/s/m1554803/download?path=/&files=ROIs{season}_{kind}.tar.gz",
               f"ROIs{season}_{kind}.tar.gz", None)
        for season in _SEN12MS_SEASONS for kind in ("s1", "s2", "s2_cloudy")
    ),
    layout="ROIs{season}_{s1,s2,s2_cloudy}/{s1,s2,s2_cloudy}_<roi>/ROIs{season}_{s1,s2,s2_cloudy}_<roi>_p<n>.tif",
    splits="by ROI: test = spring 106,123,140,31,44; summer 119,73; fall 139; winter 108,63. "
           "val = winter 22,107,130,84; summer 19,80,127,17; fall 65; spring 17. train = the rest",
    license="CC-BY-4.0",
    extra={
        "test": {"1158_spring": (106, 123, 140, 31, 44), "1868_summer": (119, 73), "1970_fall": (139,), "2017_winter": (108, 63)},
        "val": {"2017_winter": (22, 107, 130, 84), "1868_summer": (19, 80, 127, 17), "1970_fall": (65,), "1158_spring": (17,)},
        "seasons": _SEN12MS_SEASONS,
    },
))

register(DatasetSpec(
    id="spacenet2", title="SpaceNet 2 building detection imagery (WorldView-3 PAN + MUL), used for pan-sharpening",
    citation="Van Etten et al., SpaceNet: A Remote Sensing Dataset and Challenge Series, 2018",
    role="downstream", task="pansharpening",
    modalities={"pan": _mod("wv3_pan"), "mul": _mod("wv3_mul"), "mul_pansharpen": _mod("wv3_mul")},
    pairs=(("pan", "mul"),),
    sources=tuple(
        Source(f"https://spacenet-dataset.s3.amazonaws.com/spacenet/SN2_buildings/tarballs/SN2_buildings_train_{aoi}.tar.gz",
               f"SN2_buildings_train_{aoi}.tar.gz", md5, manual=True, instructions=(
                   "SpaceNet 2 lies in the requester-pays bucket s3://spacenet-dataset (an AWS account is needed): "
                   f"aws s3 cp s3://spacenet-dataset/spacenet/SN2_buildings/tarballs/SN2_buildings_train_{aoi}.tar.gz DIR/"))
        for aoi, md5 in (("AOI_2_Vegas", "307da318bc43aaf9481828f92eda9126"), ("AOI_3_Paris", "4db469e3e4e7bf025368ad730aec0888"),
                         ("AOI_4_Shanghai", "986129eecd3e842ebc2063d43b407adb"), ("AOI_5_Khartoum", "462b4bf0466c945d708befabd4d9115b"))
    ),
    layout="AOI_{n}_{City}_Train/{PAN,MUL,MUL-PanSharpen,RGB-PanSharpen,geojson/buildings,summaryData}/"
           "<PRODUCT>_AOI_{n}_{City}_img{N}.tif; PAN 650 px 1 band, MUL 163 px 8 bands, MUL-PanSharpen 650 px 8 bands",
    splits="no official split for the train tarballs: a seeded 80/20 split by image id, stored in the Zarr store",
    extra={"protocols": ("supervised", "wald"), "ratio": 4},
))


def get_dataset(name: str) -> DatasetSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; the catalog has {sorted(CATALOG)} (xgeo/catalog.py)") from None
