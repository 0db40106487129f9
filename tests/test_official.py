"""The converter for the authors' checkpoints: what it drops, maps, and refuses."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from reference import PARITY_SEED, fill_tensor, official_state_dict, parity_case, reference_input

from msa2net.models import OfficialCheckpointError, create_model, load_official_weights
from msa2net.models.official import convert_official_state_dict, detect_variant


@pytest.fixture(scope="module")
def paper_sd():
    return official_state_dict("paper", seed=1)


@pytest.fixture(scope="module")
def paper_model():
    return create_model("msa2net_paper", num_classes=9)


def _logits(model, variant):
    ref = parity_case(variant)
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(ref["input"])).numpy(), ref["logits"]


def test_drops_exactly_the_dead_keys(paper_sd, paper_model):
    report = load_official_weights(paper_model, paper_sd)
    dead = [k for k in paper_sd if k.startswith("backbone.conv.")]
    dead += [k for k in paper_sd if k.startswith("decoder_3.") and not k.startswith("decoder_3.layer_up.")]
    assert report.dropped == sorted(dead)
    assert report.loaded + len(report.dropped) == len(paper_sd)
    released = official_state_dict("released", seed=1)
    r_model = create_model("msa2net_released")
    r_report = load_official_weights(r_model, released)
    assert sum(k.startswith("decoder_2.ag_attn.") for k in r_report.dropped) == 49
    assert r_report.loaded + len(r_report.dropped) == len(released)


def test_wrappers_prefix_and_file(tmp_path, paper_sd, paper_model):
    """Every accepted form loads exactly the tensors of the bare state dict (whose logits match the reference)."""
    sources = {
        "plain": paper_sd,
        "state_dict": {"state_dict": paper_sd},
        "model": {"model": paper_sd, "epoch": 3},
        "module": collections.OrderedDict((f"module.{k}", v) for k, v in paper_sd.items()),
        "file": tmp_path / "best_model.pth",
    }
    torch.save(paper_sd, sources["file"])
    expected, _, _, _ = convert_official_state_dict(paper_sd)
    for name, source in sources.items():
        with torch.no_grad():
            for tensor in paper_model.state_dict().values():
                tensor.zero_()  # whatever is there afterwards was loaded from this source
        load_official_weights(paper_model, source)
        state = paper_model.state_dict()
        assert sorted(state) == sorted(expected), name
        assert [k for k in expected if not torch.equal(state[k], expected[k])] == [], name
    out, ref = _logits(paper_model, "paper")
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


class _Payload:
    def __reduce__(self):  # would run code on an unsafe load
        return (print, ("pickled code ran",))


def test_refuses_pickled_code(tmp_path, paper_model):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"decoder_0.last_layer.weight": torch.zeros(1)}, "x": _Payload()}, path)
    with pytest.raises(OfficialCheckpointError, match="weights-only"):
        load_official_weights(paper_model, path)


def test_missing_extra_and_misshaped_keys_are_listed(paper_sd, paper_model):
    broken = dict(paper_sd)
    del broken["decoder_1.layer_lka_1.norm1.weight"]
    broken["decoder_1.surprise.weight"] = torch.zeros(3)
    broken["decoder_0.x1_linear.weight"] = torch.zeros(96, 95)
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_weights(paper_model, broken)
    msg = str(info.value)
    assert "missing (1):\n    decoder.stage1.blocks.0.norm1.weight" in msg
    assert "unexpected (1):\n    decoder_1.surprise.weight" in msg
    assert "decoder.stage0.gate_proj.weight: checkpoint (96, 95) vs model (96, 96)" in msg


def test_wrong_variant_is_named(paper_sd):
    # refused on the keys alone, before any shape is compared: the small encoder says the same
    model = create_model("msa2net_test", variant="released", img_size=64)
    with pytest.raises(OfficialCheckpointError, match="paper-variant checkpoint but the model is the released"):
        load_official_weights(model, paper_sd)
    with pytest.raises(OfficialCheckpointError, match="neither"):
        detect_variant({"backbone.backbone.stem.conv1.weight"})


def test_class_count_mismatch_and_other_counts(paper_sd):
    model = create_model("msa2net_paper", num_classes=4)
    with pytest.raises(OfficialCheckpointError, match=r"decoder.stage0.head.weight: checkpoint \(9, 96, 1, 1\)"):
        load_official_weights(model, paper_sd)
    # an official checkpoint built for 4 classes and filled the same way loads and runs (each entry is filled on
    # its own, so only the head's entries change)
    four = dict(paper_sd)
    for key in [k for k in paper_sd if k.startswith("decoder_0.last_layer.")]:
        four[key] = fill_tensor(key, (4, *paper_sd[key].shape[1:]), paper_sd[key].dtype, seed=PARITY_SEED)
    load_official_weights(model, four)
    with torch.inference_mode():
        out = model.eval()(reference_input((2, 1, 224, 224), 3))
    assert out.shape == (2, 4, 224, 224) and torch.isfinite(out).all()


def test_missing_file(tmp_path, paper_model):
    with pytest.raises(OfficialCheckpointError, match="does not exist"):
        load_official_weights(paper_model, tmp_path / "nope.pth")
