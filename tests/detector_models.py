"""A tiny RT-DETR (transformers) with random weights, saved locally: no detector weights can be
downloaded in the tests. Shared by tests/test_detect.py and the infer / API tests."""
from pathlib import Path

import torch

LABELS = ["car", "dog", "Person", "bicycle"]  # person not first, and not lower case
PERSON = 2


def save_tiny_rtdetr(directory: Path, favoured: int = PERSON) -> Path:
    """A save_pretrained directory (model + image processor) whose heads favour class `favoured`,
    with boxes of varied size and place (the default initialisation returns the anchors)."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_indices=[2, 3, 4])
    config = RTDetrConfig(backbone_config=backbone, encoder_in_channels=[16, 16, 16], encoder_hidden_dim=16,
                          d_model=16, encoder_ffn_dim=32, encoder_attention_heads=2, decoder_in_channels=[16, 16, 16],
                          decoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, decoder_n_points=2,
                          num_queries=20, id2label=dict(enumerate(LABELS)),
                          initializer_range=0.2)  # the default 0.01 gives every query the same score
    torch.manual_seed(0)
    model = RTDetrForObjectDetection(config).eval()
    with torch.no_grad():
        for head in (model.model.decoder.class_embed[-1], model.model.enc_score_head):
            head.bias.fill_(-4.0)
            head.bias[favoured] = 0.5
        last = model.model.decoder.bbox_embed[-1].layers[-1]
        torch.nn.init.normal_(last.weight, std=0.5)
        last.bias.copy_(torch.tensor([0.0, 0.0, 2.5, 2.5]))
    model.save_pretrained(directory)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(directory)
    return Path(directory)
