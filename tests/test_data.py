import gzip
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxcert.data.load as load_module
from jaxcert.data import (
    Dataset,
    DatasetNotFoundError,
    batches,
    concentric_spheres,
    epoch_order,
    load_dataset,
    num_batches,
    parse_idx,
    read_idx,
    spheres_margin,
    write_idx,
)
from jaxcert.data.cifar_bin import RECORD
from jaxcert.data.debian import DEBIAN_PACKAGES
from jaxcert.data.idx import IDX_STEMS
from jaxcert.data.tfds_source import load_tfds as real_load_tfds

# ---------------------------------------------------------------- helpers


def fake_images(n: int, seed: int, shape=(28, 28)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_idx_dir(directory, *, gz: bool, dotted: bool = False, n_train: int = 6, n_test: int = 4):
    """A directory with the four standard idx files; returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"train": fake_images(n_train, 1), "test": fake_images(n_test, 2)}
    for split, (images_stem, labels_stem) in IDX_STEMS.items():
        for stem, array in zip((images_stem, labels_stem), arrays[split], strict=True):
            name = stem.replace("-idx", ".idx") if dotted else stem
            write_idx(directory / (name + (".gz" if gz else "")), array)
    return arrays


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No env var, no Debian package, an empty tfds directory, and tfds must not be called."""
    monkeypatch.delenv("JAXCERT_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty_tfds"))
    monkeypatch.setattr(load_module, "debian_dir", lambda name: None)

    def forbidden(*args, **kwargs):
        raise AssertionError("tensorflow-datasets must not be called without download=True or prepared data")

    monkeypatch.setattr(load_module, "load_tfds", forbidden)


def fake_tfds(monkeypatch, data_source):
    """Install a stand-in ``tensorflow_datasets`` module whose ``data_source`` is ``data_source``."""
    calls = []

    def recording(name, **kwargs):
        calls.append((name, kwargs))
        return data_source(name, **kwargs)

    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", types.SimpleNamespace(data_source=recording))
    return calls


# ---------------------------------------------------------------- idx format


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, array)
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_layout_is_big_endian():
    # 2 zero bytes, type 0x08 (ubyte), 1 dimension, size 3 big-endian, payload
    assert parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])).tolist() == [7, 8, 9]
    # int32 payload is big-endian
    assert parse_idx(bytes([0, 0, 0x0C, 1, 0, 0, 0, 1, 0, 0, 1, 2])).tolist() == [258]


def test_gzip_is_detected_from_content_not_name(tmp_path):
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 4, 5])))
    assert read_idx(path).tolist() == [4, 5]


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]), "magic"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 5]), "type code"),
        (bytes([0, 0, 8, 2, 0, 0]), "truncated"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 3, 5]), "payload"),
    ],
)
def test_corrupt_idx_is_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        parse_idx(data)


# ---------------------------------------------------------------- load_dataset from files


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dotted", [False, True])
def test_load_idx_dir(tmp_path, offline, gz, dotted):
    arrays = write_idx_dir(tmp_path, gz=gz, dotted=dotted)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split, data_dir=tmp_path)
        images, labels = arrays[split]
        assert ds.x.shape == (len(images), 28, 28, 1) and ds.x.dtype == np.float32
        np.testing.assert_allclose(ds.x[..., 0], images / 255.0, atol=1e-7)
        np.testing.assert_array_equal(ds.y, labels)
        assert ds.y.dtype == np.int32
        assert (ds.name, ds.num_classes, ds.normalization, ds.input_range) == ("mnist", 10, "mnist", (0.0, 1.0))
    assert len(load_dataset("mnist", "train", data_dir=tmp_path, limit=2)) == 2


def test_env_var_dir_with_per_dataset_subdirectories(tmp_path, offline, monkeypatch):
    mnist = write_idx_dir(tmp_path / "mnist", gz=True, n_train=3)
    fashion = write_idx_dir(tmp_path / "fashion-mnist", gz=False, n_train=5)
    monkeypatch.setenv("JAXCERT_DATA_DIR", str(tmp_path))
    np.testing.assert_array_equal(load_dataset("mnist").y, mnist["train"][1])
    ds = load_dataset("fashion_mnist")
    np.testing.assert_array_equal(ds.y, fashion["train"][1])
    assert ds.normalization == "fashion_mnist"


def test_explicit_data_dir_wins_over_env_var(tmp_path, offline, monkeypatch):
    write_idx_dir(tmp_path / "env", gz=True, n_test=3)
    explicit = write_idx_dir(tmp_path / "explicit", gz=True, n_test=7)
    monkeypatch.setenv("JAXCERT_DATA_DIR", str(tmp_path / "env"))
    np.testing.assert_array_equal(load_dataset("mnist", "test", data_dir=tmp_path / "explicit").y, explicit["test"][1])


def test_load_npz_dir(tmp_path, offline):
    x_train, y_train = fake_images(5, 3)
    x_test, y_test = fake_images(2, 4)
    np.savez(tmp_path / "data.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset("fashion_mnist", "test", data_dir=tmp_path)
    np.testing.assert_allclose(ds.x[..., 0], x_test / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y, y_test)
    # the npz file itself may be passed as data_dir
    assert len(load_dataset("fashion_mnist", "train", data_dir=tmp_path / "data.npz")) == 5


def test_npz_cifar_float_nchw_with_column_labels(tmp_path, offline):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, (4, 1))
    np.savez(tmp_path / "cifar10.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x.shape == (4, 32, 32, 3) and ds.normalization == "cifar10"
    np.testing.assert_array_equal(ds.x, x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(ds.y, y[:, 0])


def test_npz_named_after_another_data_set_is_not_used(tmp_path, offline):
    x, y = fake_images(2, 0)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    assert len(load_dataset("mnist", data_dir=tmp_path)) == 2
    with pytest.raises(DatasetNotFoundError):
        load_dataset("fashion_mnist", data_dir=tmp_path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_train": np.zeros((2, 28, 28), np.uint8), "y_train": np.zeros(2)}, "missing"),
        (
            {
                k: np.zeros((2, 30, 30), np.uint8) if k[0] == "x" else np.zeros(2, int)
                for k in ("x_train", "y_train", "x_test", "y_test")
            },
            "shape",
        ),
        (
            {
                k: np.full((2, 28, 28), 2.0) if k[0] == "x" else np.zeros(2, int)
                for k in ("x_train", "y_train", "x_test", "y_test")
            },
            r"\[0, 1\]",
        ),
    ],
)
def test_bad_npz_gives_clear_error(tmp_path, offline, arrays, message):
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", data_dir=tmp_path)


def test_cifar_binary_batches(tmp_path, offline):
    rng = np.random.default_rng(0)
    expected = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (2, RECORD), dtype=np.uint8)
        records[:, 0] %= 10
        (tmp_path / name).write_bytes(records.tobytes())
        expected[name] = records
    ds = load_dataset("cifar10", "test", data_dir=tmp_path)
    rec = expected["test_batch.bin"]
    assert ds.x.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(ds.y, rec[:, 0])
    # record layout: label, then 1024 red, 1024 green, 1024 blue bytes, row-major 32x32
    row, col = 5, 17
    for channel in range(3):
        assert ds.x[1, row, col, channel] == pytest.approx(rec[1, 1 + channel * 1024 + row * 32 + col] / 255.0)
    assert len(load_dataset("cifar10", "train", data_dir=tmp_path)) == 10


@pytest.mark.skipif(
    not (DEBIAN_PACKAGES["fashion_mnist"][1] / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("JAXCERT_DATA_DIR", raising=False)
    ds = load_dataset("fashion_mnist", "test")
    assert ds.x.shape == (10_000, 28, 28, 1) and ds.x.dtype == np.float32
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0 and ds.x.max() > 0.99
    np.testing.assert_array_equal(ds.class_counts(), np.full(10, 1000))  # the test split is balanced
    assert ds.normalization == "fashion_mnist"
    assert len(load_dataset("fashion_mnist", "train", limit=100)) == 100


# ---------------------------------------------------------------- missing data and tfds


def test_missing_data_error_lists_every_offline_option(offline):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", "test")
    message = str(info.value)
    assert isinstance(info.value, DatasetNotFoundError)
    for option in ("apt-get install dataset-fashion-mnist", "data_dir", "JAXCERT_DATA_DIR", "download=True", "npz"):
        assert option in message, option
    assert "'mnist'" in message


def test_prepared_tfds_is_read_without_download(tmp_path, offline, monkeypatch):
    tfds_dir = tmp_path / "tfds"
    (tfds_dir / "mnist" / "3.0.1").mkdir(parents=True)
    (tfds_dir / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    monkeypatch.setattr(load_module, "load_tfds", real_load_tfds)
    images, labels = fake_images(3, 9)
    records = [{"image": images[i][..., None], "label": labels[i]} for i in range(3)]
    calls = fake_tfds(monkeypatch, lambda name, **kw: records)
    ds = load_dataset("mnist", "test")
    assert calls == [("mnist", {"split": "test", "data_dir": str(tfds_dir), "download": False})]
    np.testing.assert_allclose(ds.x[..., 0], images / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y, labels)
    assert len(load_dataset("mnist", "test", limit=2)) == 2
    assert load_dataset("mnist", "test", limit=0).x.shape == (0, 28, 28, 1)


def test_download_is_passed_to_tfds_and_its_failure_reported(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(load_module, "load_tfds", real_load_tfds)

    def unreachable(name, **kwargs):
        raise ConnectionError("network is unreachable")

    calls = fake_tfds(monkeypatch, unreachable)
    with pytest.raises(DatasetNotFoundError, match="network is unreachable") as info:
        load_dataset("cifar10", "train", data_dir=tmp_path, download=True)
    assert calls == [("cifar10", {"split": "train", "data_dir": str(tmp_path), "download": True})]
    assert "JAXCERT_DATA_DIR" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "svhn"}, "unknown data set"),
        ({"name": "mnist", "split": "val"}, "split"),
        ({"name": "mnist", "limit": -1}, "limit"),
    ],
)
def test_bad_arguments(offline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(**kwargs)


# ---------------------------------------------------------------- Dataset


def test_dataset_validates_its_fields():
    x, y = np.zeros((3, 2), np.float32), np.array([0, 1, 1])
    ds = Dataset(x, y, 2, "toy")
    assert len(ds) == 3 and ds.in_shape == (2,) and len(ds.take(2)) == 2 and len(ds.take(10)) == 3
    with pytest.raises(ValueError, match="labels must lie"):
        Dataset(x, np.array([0, 1, 2]), 2, "toy")
    with pytest.raises(ValueError, match="shape"):
        Dataset(x, np.array([0, 1]), 2, "toy")
    with pytest.raises(ValueError, match="input_range"):
        Dataset(x + 2.0, y, 2, "toy")
    with pytest.raises(ValueError, match="normalization"):
        Dataset(x, y, 2, "toy", normalization="imagenet")
    with pytest.raises(ValueError, match="integers"):
        Dataset(x, y.astype(float), 2, "toy")


# ---------------------------------------------------------------- batching


def indexed_dataset(n: int) -> Dataset:
    """x[i] = i / n so that a batch reveals which examples it holds."""
    return Dataset(np.arange(n, dtype=np.float32)[:, None] / n, np.arange(n) % 3, 3, "indexed")


def batch_indices(ds: Dataset, batch_size: int, **kwargs) -> list[np.ndarray]:
    out = []
    for x, y in batches(ds, batch_size, **kwargs):
        idx = np.rint(x[:, 0] * len(ds)).astype(int)
        np.testing.assert_array_equal(y, idx % 3)  # labels stay with their inputs
        out.append(idx)
    return out


@given(n=st.integers(1, 60), batch_size=st.integers(1, 16), seed=st.integers(0, 2**31), epoch=st.integers(0, 50))
def test_batches_cover_every_example_once(n, batch_size, seed, epoch):
    ds = indexed_dataset(n)
    full = batch_indices(ds, batch_size, seed=seed, epoch=epoch, drop_last=False)
    assert len(full) == num_batches(ds, batch_size, drop_last=False) == -(-n // batch_size)
    np.testing.assert_array_equal(np.sort(np.concatenate(full)), np.arange(n))
    if batch_size <= n:
        dropped = batch_indices(ds, batch_size, seed=seed, epoch=epoch)
        assert len(dropped) == num_batches(ds, batch_size) == n // batch_size
        assert all(len(b) == batch_size for b in dropped)
        flat = np.concatenate(dropped)
        assert len(np.unique(flat)) == len(flat) == (n // batch_size) * batch_size


def test_batches_are_deterministic_in_seed_and_epoch():
    ds = indexed_dataset(50)
    run = lambda **kw: np.concatenate(batch_indices(ds, 10, **kw))
    np.testing.assert_array_equal(run(seed=1, epoch=3), run(seed=1, epoch=3))
    assert not np.array_equal(run(seed=1, epoch=3), run(seed=1, epoch=4))
    assert not np.array_equal(run(seed=1, epoch=3), run(seed=2, epoch=3))
    np.testing.assert_array_equal(run(seed=1, epoch=3, shuffle=False), np.arange(50))
    np.testing.assert_array_equal(epoch_order(50, seed=1, epoch=3), run(seed=1, epoch=3))


def test_resuming_mid_epoch_sees_the_remaining_batches():
    ds = indexed_dataset(40)
    full = batch_indices(ds, 8, seed=5, epoch=2)
    resumed = batch_indices(ds, 8, seed=5, epoch=2, start=3)
    assert len(resumed) == 2
    for a, b in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_batches_reject_bad_sizes():
    ds = indexed_dataset(5)
    with pytest.raises(ValueError, match="larger than the data set"):
        next(batches(ds, 6, seed=0, epoch=0))
    with pytest.raises(ValueError, match="batch_size"):
        num_batches(ds, 0)
    with pytest.raises(ValueError, match="start"):
        next(batches(ds, 2, seed=0, epoch=0, start=3))


# ---------------------------------------------------------------- concentric spheres


@given(
    n=st.integers(2, 300),
    dim=st.integers(1, 20),
    r_inner=st.floats(0.1, 5.0),
    gap=st.floats(0.01, 3.0),
    seed=st.integers(0, 1000),
)
def test_spheres_geometry(n, dim, r_inner, gap, seed):
    r_outer = r_inner + gap
    ds = concentric_spheres(n, dim, r_inner, r_outer, seed=seed)
    assert ds.x.shape == (n, dim) and ds.x.dtype == np.float32 and ds.num_classes == 2
    norms = np.linalg.norm(ds.x.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, np.where(ds.y == 0, r_inner, r_outer), rtol=1e-5)
    counts = ds.class_counts()
    assert counts[0] - counts[1] in (0, 1) and counts.sum() == n
    assert ds.input_range == (-np.inf, np.inf) and ds.normalization == "none"
    assert spheres_margin(r_inner, r_outer) == pytest.approx(gap / 2)


def test_spheres_are_seeded_and_spread_over_the_sphere():
    a, b = concentric_spheres(400, 10, seed=3), concentric_spheres(400, 10, seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, concentric_spheres(400, 10, seed=4).x)
    # labels are shuffled, directions are uniform: the mean direction is near 0
    assert not np.array_equal(a.y, np.sort(a.y))
    directions = a.x / np.linalg.norm(a.x, axis=1, keepdims=True)
    assert np.linalg.norm(directions.mean(0)) < 0.25


@pytest.mark.parametrize(
    "kwargs", [{"n": 1}, {"n": 10, "dim": 0}, {"n": 10, "r_inner": 1.3, "r_outer": 1.0}, {"n": 10, "r_inner": 0.0}]
)
def test_spheres_reject_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="concentric_spheres"):
        concentric_spheres(**kwargs)
