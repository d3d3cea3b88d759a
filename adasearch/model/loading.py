"""Load an AdaPerceiver from a local HF-layout folder, a .safetensors file, the name `demo`, or a hub id.

Loading is strict: every state_dict key and shape must match the architecture that config.json
describes. Weights are read with safetensors (or torch.load(weights_only=True) for .bin files).

Sizes are checked before anything is allocated: config.json values have sane upper bounds, and every
parameter shape the config implies (derived on the `meta` device, which allocates nothing) is compared
with the shapes in the safetensors header before a tensor is read or the model is built.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from adasearch.checks import is_int, is_number
from adasearch.errors import CheckpointError
from adasearch.model.adaperceiver import AdaPerceiver, AdaPerceiverConfig

DEMO_DIR = Path(__file__).parent / "demo"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Keys of the distilled backbone's feature output; a classifier ignores them.
FEATURE_PREFIXES = ("output_latents_feat.", "write_head_feat.", "output_adapter_feat.")


def read_config(path: Path) -> AdaPerceiverConfig:
    """config.json -> AdaPerceiverConfig. Unknown keys are accepted with a warning."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no config.json (an AdaPerceiver folder holds config.json + model.safetensors)")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})")
    except OSError as e:  # a folder named config.json, no permission, ...
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e.strerror or e})")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: must hold a JSON object of constructor arguments")
    known = set(AdaPerceiverConfig.keys())
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        # HF adds architectures/model_type/torch_dtype and friends; they do not change the network.
        quiet = {"architectures", "model_type", "torch_dtype", "transformers_version", "auto_map", "_name_or_path"}
        loud = [k for k in unknown if k not in quiet]
        if loud:
            warnings.warn(f"{path}: ignoring unknown config keys {loud}", stacklevel=2)
    kept = {k: v for k, v in raw.items() if k in known}
    for key, value in kept.items():
        _check_config_value(path, key, value)
    cfg = AdaPerceiverConfig(**kept)
    if cfg.embed_dim % cfg.num_heads or cfg.head_dim % 2:
        raise CheckpointError(
            f"{path}: embed_dim={cfg.embed_dim} and num_heads={cfg.num_heads} are not allowed "
            f"together; embed_dim / num_heads must be an even integer (RoPE rotates pairs)"
        )
    if cfg.mat_dims and max(cfg.mat_dims) > cfg.embed_dim:
        raise CheckpointError(
            f"{path}: mat_dims={cfg.mat_dims} is not allowed with embed_dim={cfg.embed_dim}; "
            f"every width must be between 1 and embed_dim"
        )
    return cfg


# What each config.json value must be; the positive integers size the network.
# Upper bounds are sanity caps far above any published model (the IN-1K release: embed_dim 832, depth 21,
# max_latent_tokens 256, ffn_ratio 2.57, num_classes 1000): a garbled or hostile config.json is refused in
# one line instead of sizing a network, a MAC count or a latent batch by it.
_POSITIVE_INTS = {
    "embed_dim": 1 << 16,
    "num_heads": 1 << 16,
    "depth": 1 << 10,
    "max_latent_tokens": 1 << 14,  # N latents: a dense N x N mask and attention per block
    "img_size": 1 << 16,
    "in_channels": 1 << 10,
    "patch_size": 1 << 12,
    "num_classes": 1 << 20,
}
_NUMBERS = {"rope_theta", "ffn_ratio", "proj_drop", "attn_drop", "drop_path", "head_drop"}
MAX_FFN_RATIO = 64
_BOOLS = {"qkv_bias", "proj_bias", "use_embed_ffn", "use_output_ffn"}
# Lists of sizes: token granularities (latent counts) and Matryoshka widths (at most embed_dim, checked after).
_INT_LISTS = {"mask_token_grans": _POSITIVE_INTS["max_latent_tokens"], "mat_dims": _POSITIVE_INTS["embed_dim"]}


def _check_config_value(path: Path, key: str, value) -> None:
    def bad(allowed: str):
        raise CheckpointError(f"{path}: {key}={value!r} is not allowed; {allowed}")

    if key in _POSITIVE_INTS and not (is_int(value) and 1 <= value <= _POSITIVE_INTS[key]):
        bad(f"an integer >= 1 and <= {_POSITIVE_INTS[key]}")
    if key in _NUMBERS and not (is_number(value) and value >= 0):
        bad(f"a number > 0 and <= {MAX_FFN_RATIO}" if key == "ffn_ratio" else "a number >= 0")
    if key == "ffn_ratio" and not 0 < value <= MAX_FFN_RATIO:
        bad(f"a number > 0 and <= {MAX_FFN_RATIO}")
    if key == "ls_init_values" and value is not None and not is_number(value):
        bad("a number or null")
    if key in _BOOLS and not isinstance(value, bool):
        bad("true or false")
    if (
        key in _INT_LISTS
        and value is not None
        and not (isinstance(value, list) and value and all(is_int(v) and 1 <= v <= _INT_LISTS[key] for v in value))
    ):
        bad(f"null or a non-empty list of integers >= 1 and <= {_INT_LISTS[key]}")


def read_state_dict(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated files raise many different types
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})")


def read_weight_shapes(path: Path) -> dict:
    """key -> shape of a .safetensors file, from its header: no tensor is read."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # corrupt or truncated files raise many different types
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})")


def weight_shapes(sd, where: str, tensors_only: bool = False) -> dict:
    """key -> shape tuple of a state dict of tensors (or of shapes already, unless tensors_only); anything
    else is refused."""
    if not tensors_only and isinstance(sd, dict) and all(isinstance(v, tuple) for v in sd.values()):
        return sd
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            f"{where}: holds {type(sd).__name__}, not a state dict of tensors; is this an AdaPerceiver checkpoint?"
        )
    return {k: tuple(v.shape) for k, v in sd.items()}


def fit_config_to_weights(cfg: AdaPerceiverConfig, sd: dict, where: str) -> AdaPerceiverConfig:
    """Take the shapes that the weights fix (D, p, P, L, C, in_channels) and check config.json agrees.

    sd: a state dict of tensors, or key -> shape (read_weight_shapes)."""
    shapes = weight_shapes(sd, where)
    try:
        proj = shapes["patch_embed.embed.proj.weight"]
        pos = shapes["patch_embed.pos_embed"]
    except KeyError as e:
        raise CheckpointError(f"{where}: missing key {e.args[0]!r}; is this an AdaPerceiver checkpoint?")
    if len(proj) != 4 or len(pos) != 3:
        raise CheckpointError(
            f"{where}: patch_embed.embed.proj.weight has shape {list(proj)} (needs 4 dims) "
            f"and patch_embed.pos_embed {list(pos)} (needs 3); not an AdaPerceiver checkpoint"
        )
    d, cin, p, _ = proj
    grid = math.isqrt(pos[1])
    if grid * grid != pos[1]:
        raise CheckpointError(f"{where}: patch_embed.pos_embed has {pos[1]} positions, not a square grid")
    depth = len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})
    checks = {"embed_dim": d, "in_channels": cin, "depth": depth}
    for key, value in checks.items():
        if getattr(cfg, key) != value:
            raise CheckpointError(f"{where}: config.json {key}={getattr(cfg, key)} but the weights have {key}={value}")
    if cfg.patch_size != p or cfg.img_size != grid * p:
        cfg.patch_size, cfg.img_size = p, grid * p  # the reference facts leave p unverified: trust the weights
    return cfg


def _dim_sources(key: str, cfg: AdaPerceiverConfig) -> tuple:
    """For each dimension of parameter `key`, the config values that size it (None: a constant)."""
    D = f"embed_dim={cfg.embed_dim}"
    F = f"ffn_ratio={cfg.ffn_ratio}: FFN hidden int({cfg.embed_dim} * {cfg.ffn_ratio}) = {cfg.ffn_hidden}"
    C = f"num_classes={cfg.num_classes}"
    head = key.startswith("output_adapter.")
    if key == "patch_embed.pos_embed":
        return (None, f"img_size={cfg.img_size}, patch_size={cfg.patch_size}", D)
    if key == "patch_embed.embed.proj.weight":
        p = f"patch_size={cfg.patch_size}"
        return (D, f"in_channels={cfg.in_channels}", p, p)
    if key == "output_latents.token":
        return (None, D)
    if key in ("output_adapter.ffn.weight", "output_adapter.ffn.bias"):
        return (C, D)
    if key.endswith("ffn.fc1.weight"):
        return (F, D)
    if key.endswith("ffn.fc1.bias"):
        return (F,)
    if key.endswith("ffn.fc2.weight"):
        return (C if head else D, F)
    if key.endswith("ffn.fc2.bias"):
        return (C if head else D,)
    return (D, D)


def _shape_mismatch(key: str, got: tuple, want: tuple, cfg: AdaPerceiverConfig, where: str, said: str) -> str:
    sources = _dim_sources(key, cfg)
    if len(got) == len(want):
        dims = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    else:
        dims = range(len(want))
    names = list(dict.fromkeys(sources[i] for i in dims if i < len(sources) and sources[i]))
    why = f" ({'; '.join(names)})" if names else ""
    return f"{where}: key {key!r} has shape {list(got)} in the weights, {said} says {list(want)}{why}"


def _classifier_shapes(shapes: dict) -> dict:
    return {k: v for k, v in shapes.items() if not k.startswith(FEATURE_PREFIXES)}


def check_shapes(cfg: AdaPerceiverConfig, sd: dict, where: str, said: str = "the config") -> None:
    """Every key and shape the config implies against the weights', before anything is allocated.

    The expected shapes come from a model built on the meta device (no memory); sd holds tensors or
    shape tuples; the distilled backbone's feature keys are left out. `said` names the config source."""
    shapes = _classifier_shapes(weight_shapes(sd, where))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in AdaPerceiver(cfg).state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    if missing:
        raise CheckpointError(
            f"{where}: missing key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = [k for k in shapes if k not in expected]
    if extra:
        raise CheckpointError(
            f"{where}: unexpected key {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    for k, want in expected.items():
        if shapes[k] != want:
            raise CheckpointError(_shape_mismatch(k, shapes[k], want, cfg, where, said))


def build_strict(cfg: AdaPerceiverConfig, sd: dict, where: str, said: str = "the config") -> AdaPerceiver:
    ignored = sorted({k.split(".")[0] for k in sd if k.startswith(FEATURE_PREFIXES)})
    if ignored:
        warnings.warn(
            f"{where}: distilled-backbone checkpoint; loading the classifier and ignoring the feature output {ignored}",
            stacklevel=2,
        )
        sd = _classifier_shapes(sd)
    weight_shapes(sd, where, tensors_only=True)
    check_shapes(cfg, sd, where, said)  # on the meta device: the real model is built only at the right size
    model = AdaPerceiver(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load_folder(folder: Path) -> AdaPerceiver:
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).exists()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no model.safetensors (or pytorch_model.bin) in the folder")
    return load_file(weights, folder / "config.json")


def load_file(weights: Path, config: Union[Path, dict, AdaPerceiverConfig, None] = None) -> AdaPerceiver:
    """Config, then the weights' shapes (the safetensors header only), then the tensors and the model."""
    if config is None:
        candidates = [weights.with_suffix(".json"), weights.parent / "config.json"]
        config = next((c for c in candidates if c.exists()), candidates[-1])
    if isinstance(config, AdaPerceiverConfig):
        cfg, said = AdaPerceiverConfig(**config.to_dict()), "the config"
    elif isinstance(config, dict):
        cfg, said = AdaPerceiverConfig(**config), "the config"
    else:
        cfg, said = read_config(Path(config)), Path(config).name
    where = str(weights)
    if weights.suffix == ".safetensors":
        sd, shapes = None, read_weight_shapes(weights)
    else:  # torch.load has no header to read: the tensors are the shapes
        sd = read_state_dict(weights)
        shapes = weight_shapes(sd, where, tensors_only=True)
    cfg = fit_config_to_weights(cfg, shapes, where)
    check_shapes(cfg, shapes, where, said)  # before any tensor is read or the model is built
    if sd is None:
        sd = read_state_dict(weights)
    return build_strict(cfg, sd, where, said)


def load_hub(repo_id: str) -> AdaPerceiver:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"model {repo_id!r} is neither a local folder nor a file; loading a hub id needs "
            f"huggingface_hub (pip install 'adasearch[hub]'), or pass a local folder"
        )
    try:
        folder = snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors"])
    except Exception as e:
        raise CheckpointError(
            f"cannot fetch {repo_id!r} from the hub ({type(e).__name__}); offline machines "
            f"need a local folder with config.json + model.safetensors"
        )
    return load_folder(Path(folder))


def looks_like_hub_id(s: str) -> bool:
    """owner/name: one slash, no suffix, not a path that starts like one."""
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not Path(s).suffix


def load_model(source: Union[str, Path], config: Optional[Union[Path, dict]] = None) -> AdaPerceiver:
    """`demo`, a folder (config.json + model.safetensors), a weights file (+ config), or a hub id."""
    if isinstance(source, str) and source == "demo":
        return load_folder(DEMO_DIR)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_folder(path)
    if path.is_file():
        return load_file(path, config)
    s = str(source)
    if looks_like_hub_id(s):
        return load_hub(s)
    raise CheckpointError(
        f"model {s!r}: no such folder or file (allowed: 'demo', a folder with config.json + "
        f"model.safetensors, a .safetensors file, or a hub id owner/name)"
    )


def save_model(model: AdaPerceiver, folder: Union[str, Path]) -> Path:
    """Write the HF layout (config.json + model.safetensors) that load_model reads back."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder
