"""Tests for msa2net.data.preprocessing: each kind on hand-computed values, errors, dict round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msa2net.data.preprocessing import (
    CT_PREPROCESSING,
    ISIC_PREPROCESSING,
    SYNAPSE_PREPROCESSING,
    Preprocessing,
)


def test_ct_window_hand_values():
    hu = np.array([[-1000.0, -125.0], [75.0, 275.0], [1000.0, -25.0]], np.float32)
    unit = CT_PREPROCESSING.to_unit(hu)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [[0.0, 0.0], [0.5, 1.0], [1.0, 0.25]], atol=1e-7)
    np.testing.assert_allclose(CT_PREPROCESSING(hu), [[-1.0, -1.0], [0.0, 1.0], [1.0, -0.5]], atol=1e-6)


def test_ct_window_int16_volume_and_custom_window():
    volume = np.array([[[0, 100], [200, -100]]], np.int16)  # (D, H, W)
    prep = Preprocessing(kind="ct_window", window=(0, 200), mean=0.0, std=1.0)
    np.testing.assert_allclose(prep(volume), [[[0.0, 0.5], [1.0, 0.0]]])


def test_unit_passes_through_legacy_values():
    data = np.array([[0.0, 0.25], [1.0, 1.02]], np.float32)  # slight excursion as in some Synapse releases
    np.testing.assert_array_equal(SYNAPSE_PREPROCESSING.to_unit(data), data)
    np.testing.assert_allclose(SYNAPSE_PREPROCESSING(data), [[-1.0, -0.5], [1.0, 1.04]], rtol=1e-6)


def test_unit_rejects_raw_hu():
    with pytest.raises(ValueError, match=r"found \[-1000, 400\].*ct_window"):
        SYNAPSE_PREPROCESSING.to_unit(np.array([-1000.0, 400.0], np.float32))


def test_zscore_percentile_clip_and_minmax():
    data = np.arange(1001, dtype=np.float32)  # percentiles 0.5 / 99.5 -> 5 / 995
    prep = Preprocessing(kind="zscore")
    unit = prep.to_unit(data)
    assert unit.min() == 0.0 and unit.max() == 1.0
    np.testing.assert_allclose(unit[[0, 5, 500, 995, 1000]], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_zscore_per_channel_and_constant_channel():
    data = np.stack([np.linspace(0, 10, 201), np.full(201, 7.0)], axis=-1).astype(np.float32)[:, None]  # (H, 1, 2)
    prep = Preprocessing(kind="zscore", in_channels=2, clip_percentiles=(0.0, 100.0), mean=(0.0, 0.0), std=(1.0, 1.0))
    unit = prep.to_unit(data)
    assert unit.shape == (201, 1, 2)
    np.testing.assert_allclose(unit[:, 0, 0], np.linspace(0, 1, 201), atol=1e-6)
    np.testing.assert_array_equal(unit[..., 1], 0.0)


def test_rgb_hand_values_per_channel():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (255, 51, 0)
    prep = Preprocessing(kind="rgb", in_channels=3, mean=(0.5, 0.2, 0.0), std=(0.5, 0.1, 1.0))
    np.testing.assert_allclose(prep.to_unit(image)[0, 0], [1.0, 0.2, 0.0], atol=1e-7)
    np.testing.assert_allclose(prep(image)[0, 0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(ISIC_PREPROCESSING(image)[1, 1], [-1.0, -1.0, -1.0])


def test_rgb_grey_is_repeated_and_rgba_loses_alpha():
    grey = np.array([[0, 255]], np.uint8)
    unit = ISIC_PREPROCESSING.to_unit(grey)
    assert unit.shape == (1, 2, 3)
    np.testing.assert_array_equal(unit[0, 1], [1.0, 1.0, 1.0])
    rgba = np.zeros((1, 1, 4), np.uint8)
    rgba[..., 3] = 255
    assert ISIC_PREPROCESSING.to_unit(rgba).tolist() == [[[0.0, 0.0, 0.0]]]


def test_channel_mismatches_are_rejected():
    with pytest.raises(ValueError, match="colour image of shape \\(4, 4, 3\\) for a 1-channel model"):
        CT_PREPROCESSING.to_unit(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2 channels"):
        Preprocessing(kind="zscore", in_channels=2).to_unit(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="8-bit values 0..255"):
        ISIC_PREPROCESSING.to_unit(np.full((2, 2, 3), 4000, np.uint16))


def test_nan_and_inf_are_reported_with_counts():
    data = np.zeros((3, 3), np.float32)
    data[0, 0] = np.nan
    data[1, 1] = np.nan
    data[2, 2] = np.inf
    for prep in (CT_PREPROCESSING, SYNAPSE_PREPROCESSING, Preprocessing(kind="zscore")):
        with pytest.raises(ValueError, match="2 NaN and 1 infinite values.*check the file"):
            prep(data)


def test_dict_round_trip_through_json():
    for prep in (
        CT_PREPROCESSING,
        SYNAPSE_PREPROCESSING,
        ISIC_PREPROCESSING,
        Preprocessing(kind="zscore", in_channels=2, mean=(0.1, 0.2), std=(0.3, 0.4), clip_percentiles=(1, 99)),
    ):
        restored = Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
        assert restored == prep
    assert CT_PREPROCESSING.to_dict()["window"] == [-125.0, 275.0]


def test_defaults_are_broadcast():
    prep = Preprocessing(kind="rgb", in_channels=3)
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.5, 0.5, 0.5)
    assert Preprocessing(kind="ct_window").window == (-125.0, 275.0)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"kind": "unit", "in_channels": 1, "windw": [0, 1]}, r"unknown keys \['windw'\]"),
        ({"kind": "unit"}, r"missing required keys \['in_channels'\]"),
        ({"kind": "hu", "in_channels": 1}, "unknown preprocessing kind 'hu'; choose one of: ct_window"),
        ({"kind": "unit", "in_channels": 1, "window": [0, 1]}, "only used by kind 'ct_window'"),
        ({"kind": "unit", "in_channels": 2, "mean": [0.1, 0.2, 0.3]}, "mean needs 1 or in_channels=2 values"),
        ({"kind": "unit", "in_channels": 1, "std": [0.0]}, "std must be positive"),
        ({"kind": "ct_window", "in_channels": 1, "window": [100, -100]}, "lo < hi"),
    ],
)
def test_bad_dicts_are_rejected(record, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(record)
