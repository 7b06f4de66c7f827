"""Export a backbone to ONNX with a dynamic batch axis (the TorchScript exporter, quietly)."""

import warnings

import torch


def export_onnx(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            torch.randn(2, 3, 112, 112),
            str(path),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "b"}, "embeddings": {0: "b"}},
            dynamo=False,
        )
