"""Strict checkpoint loading in the published HF layout, and one-line refusals."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adasearch import load_model, save_model
from adasearch.cli import main
from adasearch.errors import CheckpointError
from tests.helpers import random_model


@pytest.fixture
def ckpt(tmp_path):
    model = random_model()
    return save_model(model, tmp_path / "ckpt"), model


def test_round_trip_is_exact(ckpt):
    folder, model = ckpt
    loaded = load_model(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, num_tokens=8).logits, model(x, num_tokens=8).logits)


def test_published_key_names(ckpt):
    folder, _ = ckpt
    keys = set(load_file(str(folder / "model.safetensors")))
    for k in [
        "process_latents.token",
        "output_latents.token",
        "patch_embed.pos_embed",
        "patch_embed.embed.proj.weight",
        "patch_embed.norm.weight",
        "patch_embed.ffn.fc1.weight",
        "read_head.snk_norm.weight",
        "read_head.src_norm.bias",
        "read_head.cattn.q.weight",
        "write_head.cattn.proj.bias",
        "blocks.3.attn.k.weight",
        "blocks.0.ls1.gamma",
        "blocks.0.ls2.gamma",
        "blocks.2.ffn.fc2.weight",
        "output_adapter.ffn.weight",
    ]:
        assert k in keys, k


def test_safetensors_file_with_sibling_config(ckpt):
    folder, model = ckpt
    loaded = load_model(folder / "model.safetensors")
    assert loaded.cfg.embed_dim == model.cfg.embed_dim


def _rewrite(folder, edit):
    sd = load_file(str(folder / "model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda sd: sd.pop("blocks.1.ls2.gamma"), "missing key 'blocks.1.ls2.gamma'"),
        (lambda sd: sd.__setitem__("blocks.0.extra.weight", torch.zeros(2)), "unexpected key 'blocks.0.extra.weight'"),
        (
            lambda sd: sd.__setitem__("blocks.2.ffn.fc1.bias", torch.zeros(3)),
            "'blocks.2.ffn.fc1.bias' has shape \\[3\\]",
        ),
    ],
)
def test_refusals_name_the_key(ckpt, edit, needle):
    folder, _ = ckpt
    _rewrite(folder, edit)
    with pytest.raises(CheckpointError, match=needle):
        load_model(folder)


def test_distilled_backbone_loads_with_a_message(ckpt):
    folder, model = ckpt
    _rewrite(
        folder,
        lambda sd: sd.update(
            {"write_head_feat.cattn.q.weight": torch.zeros(4, 4), "output_latents_feat.proj.weight": torch.zeros(4, 4)}
        ),
    )
    with pytest.warns(UserWarning, match="ignoring the feature output.*write_head_feat"):
        loaded = load_model(folder)
    assert torch.equal(loaded.blocks[0].attn.q.weight, model.blocks[0].attn.q.weight)


def test_config_disagreeing_with_weights(ckpt):
    folder, _ = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    cfg["embed_dim"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="embed_dim=64 but the weights have embed_dim=32"):
        load_model(folder)


def test_unknown_config_keys_warn(ckpt):
    folder, _ = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    cfg["brand_new_key"] = 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="brand_new_key"):
        load_model(folder)


def _cli_error(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def test_cli_bad_checkpoints_get_one_line(tmp_path, ckpt):
    folder, _ = ckpt
    assert "no such folder or file" in _cli_error(["inspect", str(tmp_path / "nope")])
    (folder / "config.json").unlink()
    assert "no config.json" in _cli_error(["inspect", str(folder)])
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert "cannot read weights" in _cli_error(["inspect", str(bad)])
    (bad / "config.json").unlink()
    (bad / "config.json").mkdir()  # a folder where the file should be
    assert "config.json: cannot be read" in _cli_error(["inspect", str(bad)])


def test_offline_hub_id_is_a_clear_error():
    with pytest.raises(CheckpointError, match="pjajal/adaperceiver-v1-in1k-ft"):
        load_model("pjajal/adaperceiver-v1-in1k-ft")


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("num_heads", "4", "num_heads='4' is not allowed; an integer >= 1"),
        ("num_heads", 0, "num_heads=0 is not allowed"),
        ("num_heads", 3, "embed_dim / num_heads must be an even integer"),
        ("depth", "6", "depth='6' is not allowed"),
        ("ffn_ratio", "2", "ffn_ratio='2' is not allowed; a number"),
        ("ls_init_values", "x", "ls_init_values='x'"),
        ("mask_token_grans", 5, "mask_token_grans=5 is not allowed"),
        ("qkv_bias", 1, "qkv_bias=1 is not allowed; true or false"),
    ],
)
def test_config_json_values_are_checked(ckpt, key, value, needle):
    folder, _ = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    assert needle in _cli_error(["inspect", str(folder)])


@pytest.mark.parametrize(
    "content",
    [
        torch.zeros(3),
        [torch.zeros(2)],
        {"patch_embed.embed.proj.weight": torch.zeros(4, 4), "patch_embed.pos_embed": torch.zeros(1, 4, 4)},
        {"patch_embed.embed.proj.weight": (32, 3, 4, 4), "patch_embed.pos_embed": (1, 16, 32)},  # shapes, no tensors
    ],
)
def test_weights_that_are_not_an_adaperceiver_state_dict(tmp_path, ckpt, content):
    folder, _ = ckpt
    (folder / "model.safetensors").unlink()
    torch.save(content, folder / "pytorch_model.bin")
    line = _cli_error(["inspect", str(folder / "pytorch_model.bin")])
    assert "AdaPerceiver checkpoint" in line


# ---------------------------------------------------------------- sizes are checked before anything is allocated


@pytest.fixture
def nothing_allocated(monkeypatch):
    """Fail the test if the model is built with real tensors, or tensors are read from a .safetensors file.

    The check runs before the original __init__, so even without the size checks nothing big is allocated."""
    import safetensors.torch

    from adasearch.model.adaperceiver import AdaPerceiver

    original = AdaPerceiver.__init__

    def meta_only(self, cfg):
        if torch.empty(0).device.type != "meta":
            raise AssertionError(f"AdaPerceiver built with real tensors before the sizes were checked: {cfg}")
        original(self, cfg)

    def no_tensors(*args, **kwargs):
        raise AssertionError("tensors read before the sizes were checked")

    monkeypatch.setattr(AdaPerceiver, "__init__", meta_only)
    monkeypatch.setattr(safetensors.torch, "load_file", no_tensors)


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "key, value, line",
    [
        # absurd sizes: refused by config.json's sanity caps, whatever the weights say
        (
            "num_classes",
            1000000000,
            "config.json: num_classes=1000000000 is not allowed; an integer >= 1 and <= 1048576",
        ),
        ("ffn_ratio", 10000000, "config.json: ffn_ratio=10000000 is not allowed; a number > 0 and <= 64"),
        (
            "max_latent_tokens",
            1000000000,
            "config.json: max_latent_tokens=1000000000 is not allowed; an integer >= 1 and <= 16384",
        ),
        ("img_size", 1000000000, "config.json: img_size=1000000000 is not allowed; an integer >= 1 and <= 65536"),
        ("depth", 1000000, "config.json: depth=1000000 is not allowed; an integer >= 1 and <= 1024"),
        ("num_classes", 1e9, "config.json: num_classes=1000000000.0 is not allowed; an integer >= 1 and <= 1048576"),
        (
            "mask_token_grans",
            [2, 1000000000],
            "config.json: mask_token_grans=[2, 1000000000] is not allowed; "
            "null or a non-empty list of integers >= 1 and <= 16384",
        ),
        (
            "mat_dims",
            [16, 64],
            "config.json: mat_dims=[16, 64] is not allowed with embed_dim=32; "
            "every width must be between 1 and embed_dim",
        ),
        # within the caps but not what the weights hold: the first key whose shape differs
        (
            "num_classes",
            11,
            "model.safetensors: key 'output_adapter.ffn.weight' has shape [7, 32] in the weights, "
            "config.json says [11, 32] (num_classes=11)",
        ),
        (
            "num_classes",
            1 << 20,
            "model.safetensors: key 'output_adapter.ffn.weight' has shape [7, 32] in the weights, "
            "config.json says [1048576, 32] (num_classes=1048576)",
        ),
        (
            "ffn_ratio",
            64,
            "model.safetensors: key 'patch_embed.ffn.fc1.weight' has shape [82, 32] in the weights, "
            "config.json says [2048, 32] (ffn_ratio=64: FFN hidden int(32 * 64) = 2048)",
        ),
        ("use_output_ffn", True, "model.safetensors: missing key 'output_adapter.norm.weight' (and 5 more)"),
        ("qkv_bias", False, "model.safetensors: unexpected key 'blocks.0.attn.k.bias' (and 17 more)"),
    ],
)
def test_sizes_are_checked_before_allocating(ckpt, nothing_allocated, key, value, line):
    folder, _ = ckpt
    _edit_config(folder, **{key: value})
    error = _cli_error(["inspect", str(folder)])
    assert error.startswith(f"error: {folder}") and error.endswith(line), error


def test_torch_bin_weights_are_checked_before_building(ckpt, nothing_allocated):
    folder, model = ckpt
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    _edit_config(folder, num_classes=1 << 20)
    assert _cli_error(["inspect", str(folder)]).endswith(
        "pytorch_model.bin: key 'output_adapter.ffn.weight' has shape [7, 32] in the weights, "
        "config.json says [1048576, 32] (num_classes=1048576)"
    )


def test_a_config_passed_in_is_checked_against_the_weights(ckpt, nothing_allocated):
    folder, model = ckpt
    config = {**model.cfg.to_dict(), "ffn_ratio": 3.0}
    with pytest.raises(CheckpointError, match=r"the config says \[96, 32\] \(ffn_ratio=3.0: FFN hidden"):
        load_model(folder / "model.safetensors", config=config)


def test_a_good_checkpoint_builds_one_model_after_the_check(ckpt, monkeypatch):
    from adasearch.model.adaperceiver import AdaPerceiver

    folder, model = ckpt
    built = []
    original = AdaPerceiver.__init__

    def record(self, cfg):
        built.append(torch.empty(0).device.type)
        original(self, cfg)

    monkeypatch.setattr(AdaPerceiver, "__init__", record)
    loaded = load_model(folder)
    assert built[-1] == "cpu" and built.count("cpu") == 1 and "meta" in built[: built.index("cpu")]
    assert torch.equal(loaded.output_adapter.ffn.weight, model.output_adapter.ffn.weight)
