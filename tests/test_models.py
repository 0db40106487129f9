"""The model: parity with the authors' code, parameter counts, sizes, channels, gradients, encoder weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import fill_model, official_entries, official_state_dict, parity_case

from msa2net.models import (
    EncoderWeightsError,
    MSA2Net,
    create_model,
    list_models,
    load_official_weights,
    official_parameter_count,
)


@pytest.fixture(scope="module", params=["paper", "released"])
def official_model(request):
    variant = request.param
    model = create_model(f"msa2net_{variant}", num_classes=9, in_channels=1)
    report = load_official_weights(model, official_state_dict(variant, seed=1))
    assert report.variant == variant
    return variant, model.eval(), report


def _capture(model: MSA2Net) -> dict[str, torch.Tensor]:
    """Hook the decoder's token outputs under the official stage names."""
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in (("expand3", "decoder_3"), ("stage2", "decoder_2"), ("stage1", "decoder_1")):
        getattr(model.decoder, ours).register_forward_hook(lambda m, i, o, n=theirs: out.__setitem__(n, o))
    return out


def test_parity_with_reference(official_model):
    variant, model, _ = official_model
    ref = parity_case(variant)
    captured = _capture(model)
    x = torch.from_numpy(ref["input"])
    with torch.inference_mode():
        feats = model.encoder(x)
        logits = model(x)
    # the official code returns the encoder features deepest first
    for i, feat in enumerate(reversed(feats)):
        np.testing.assert_allclose(feat.numpy(), ref[f"encoder.{i}"], atol=1e-4 * np.abs(ref[f"encoder.{i}"]).max())
    for name in ("decoder_3", "decoder_2", "decoder_1"):
        expected = ref[name]
        assert captured[name].shape == expected.shape, name
        np.testing.assert_allclose(captured[name].numpy(), expected, atol=1e-4 * np.abs(expected).max(), err_msg=name)
    assert logits.shape == ref["logits"].shape == (1, 9, 224, 224)
    err = np.abs(logits.numpy() - ref["logits"]).max()
    assert err <= 1e-4 * np.abs(ref["logits"]).max(), err


def test_parity_float64_is_tighter(official_model):
    """In float64 the only difference left is the reference's float32 storage."""
    variant, model, _ = official_model
    ref = parity_case(variant)
    model64 = create_model(f"msa2net_{variant}").double().eval()
    model64.load_state_dict(model.state_dict())
    with torch.inference_mode():
        logits = model64(torch.from_numpy(ref["input"]).double()).numpy()
    assert np.abs(logits - ref["logits"]).max() <= 2e-6 * np.abs(ref["logits"]).max()


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_batch_and_channels_consistency(variant):
    """Raw reshapes must stay per sample: a batch equals its samples; 3 equal channels equal 1 channel.

    On the small encoder, non-square, with the deterministic fill (every branch at full strength); the decoder's
    code, and so its reshapes, is the same at every size and encoder width."""
    model = fill_model(create_model("msa2net_test", variant=variant, num_classes=3, img_size=(64, 96)), seed=1)
    model.eval()
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 1, 64, 96, generator=g) * 2 - 1
    with torch.inference_mode():
        batched = model(x)
        single = torch.cat([model(x[:1]), model(x[1:])])
        rgb_model = create_model("msa2net_test", variant=variant, num_classes=3, in_channels=3, img_size=(64, 96))
        rgb_model.load_state_dict(model.state_dict())
        rgb = rgb_model.eval()(x.repeat(1, 3, 1, 1))
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rgb, batched, atol=1e-5, rtol=1e-5)
    # the samples differ beyond that tolerance, so a batch with its samples mixed up would fail it
    assert not torch.allclose(batched, batched.flip(0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("variant", "used", "official"), [("paper", 76_606_666, 112_767_981), ("released", 71_013_299, 93_660_877)]
)
def test_parameter_counts(variant, used, official):
    model = create_model(f"msa2net_{variant}", num_classes=9)
    assert sum(p.numel() for p in model.parameters()) == used
    assert official_parameter_count(model) == official
    # and the official count is what the authors' key list holds (trainable tensors only)
    from_keys = sum(
        int(np.prod(shape))
        for key, shape, dtype in official_entries(variant)
        if dtype.is_floating_point and not key.endswith(("running_mean", "running_var"))
    )
    assert from_keys == official


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_every_parameter_runs(variant):
    """No dead modules: every parameter of both variants gets a gradient (on the pico encoder, of the full
    model's MaxViT-rmlp family; the decoder is built by the same code at every width)."""
    m = create_model("msa2net_pico", variant=variant, num_classes=3, img_size=64)
    assert m.variant == variant
    m(torch.randn(1, 1, 64, 64)).sum().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None]
    assert dead == []


def test_registry_lists_variants():
    names = list_models()
    for name in ("msa2net_paper", "msa2net_released", "msa2net_pico", "msa2net_test"):
        assert name in names
    with pytest.raises(ValueError, match="unknown model 'nope'.*msa2net_paper"):
        create_model("nope")


@pytest.mark.parametrize(("in_channels", "size"), [(1, (64, 64)), (3, (64, 96)), (1, (96, 64))])
def test_small_variant_shapes_and_backward(in_channels, size):
    model = create_model("msa2net_test", num_classes=4, in_channels=in_channels, img_size=size)
    x = torch.randn(2, in_channels, *size)
    logits = model(x)
    assert logits.shape == (2, 4, *size)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_released_design_on_small_encoder():
    model = create_model("msa2net_test", variant="released", num_classes=2, img_size=64)
    assert model.decoder.stage2.masag is None
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_bad_input_size_error_names_sizes():
    model = create_model("msa2net_test", img_size=(64, 96))
    with pytest.raises(ValueError, match=r"built for 64x96 inputs, got 70x100.*nearest valid sizes: 64x96, 64x128"):
        model(torch.randn(1, 1, 70, 100))
    with pytest.raises(ValueError, match="3-channel input|built for 1-channel input"):
        model(torch.randn(1, 3, 64, 96))
    with pytest.raises(ValueError, match="multiples of 32.*nearest valid: 64x64, 64x96, 96x64, 96x96"):
        MSA2Net(encoder="test_maxvit", img_size=(80, 80))


def test_same_weights_load_at_every_size():
    small = create_model("msa2net_pico", num_classes=3, img_size=64)
    other = create_model("msa2net_pico", num_classes=3, img_size=(96, 128))
    other.load_state_dict(small.state_dict(), strict=True)
    assert other(torch.randn(1, 1, 96, 128)).shape == (1, 3, 96, 128)


def test_inference_mode_and_bf16_autocast():
    model = create_model("msa2net_test", num_classes=3, img_size=64).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.1


# ---------------------------------------------------------------------------------------------- encoder weights


def test_encoder_weights_from_local_files(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_maxvit", img_size=64)  # with its classifier, like the authors' file
    state = source.state_dict()
    pth, st = tmp_path / "enc.pth", tmp_path / "enc.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    for path in (pth, st):
        model = MSA2Net(encoder="test_maxvit", img_size=64, num_classes=2, pretrained_encoder=str(path))
        for k, v in model.encoder.backbone.state_dict().items():
            assert torch.equal(v, state[k]), k
    broken = dict(state)
    broken.pop("stem.conv1.weight")
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(EncoderWeightsError, match=r"missing \(1\):\n    stem.conv1.weight[\s\S]*extra.weight"):
        MSA2Net(encoder="test_maxvit", img_size=64, pretrained_encoder=str(tmp_path / "broken.pth"))
    with pytest.raises(EncoderWeightsError, match="does not exist.*--pretrained-encoder"):
        MSA2Net(encoder="test_maxvit", img_size=64, pretrained_encoder=str(tmp_path / "absent.pth"))


def test_hub_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: an offline machine, made certain
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub

    def retries(*args, **kwargs):  # huggingface_hub would retry for about 47 s: the probe must answer first
        raise AssertionError("huggingface_hub was asked to download from an unreachable hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", retries)
    with pytest.raises(EncoderWeightsError) as info:
        MSA2Net(encoder="maxvit_rmlp_pico_rw_256", img_size=64, pretrained_encoder="hub")
    msg = str(info.value)
    assert "timm/maxvit_rmlp_pico_rw_256.sw_in1k" in msg and "model.safetensors" in msg
    assert "--pretrained-encoder" in msg


@pytest.mark.parametrize("value", ["1", "true", "YES", "On"])
def test_one_reading_of_hf_hub_offline_for_encoder_weights_and_published_models(value, monkeypatch):
    from msa2net.models.hub import HubUnreachable, check_hub, hub_offline
    from msa2net.models.pretrained import HubUnavailableError, resolve_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline()
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE is set"):
        check_hub()
    with pytest.raises(EncoderWeightsError, match="HF_HUB_OFFLINE is set"):
        MSA2Net(encoder="maxvit_rmlp_pico_rw_256", img_size=64, pretrained_encoder="hub")
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE is set"):
        resolve_pretrained("msa2net-tests/absent-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()
