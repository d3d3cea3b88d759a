import warnings

import pytest
import torch

from adasearch.model.adaperceiver import AdaPerceiver, AdaPerceiverConfig

warnings.filterwarnings("ignore", category=DeprecationWarning)

# Published IN-1K layout (use_embed_ffn, LayerScale, no output FFN) at a test-sized scale.
SMALL = dict(embed_dim=32, num_heads=4, depth=4, max_latent_tokens=16, ffn_ratio=2.57,
             mask_token_grans=[2, 4, 8, 16], mat_dims=[16, 24, 32], img_size=16, patch_size=4,
             in_channels=3, num_classes=7, use_embed_ffn=True, use_output_ffn=False, ls_init_values=1e-6)


def random_model(seed: int = 0, **overrides) -> AdaPerceiver:
    """Random weights; LayerScale and biases randomised so no path is a no-op in the tests."""
    torch.manual_seed(seed)
    model = AdaPerceiver(AdaPerceiverConfig(**{**SMALL, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture
def model():
    return random_model()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(6, 3, 16, 16)
