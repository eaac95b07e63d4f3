"""ImageNet backbones built without torch.

``fastimg.features.nets.pth``           read a PyTorch ``.pth`` state dict as NumPy arrays.
``fastimg.features.nets.onnx_build``    small helpers that emit ONNX nodes and fold batch norms.
``fastimg.features.nets.efficientnet``  EfficientNet-Lite0 ... Lite4 as an ``onnx.ModelProto``.
``fastimg.features.nets.mobilenet``     MobileNetV2 (torchvision layout) as an ``onnx.ModelProto``.
``fastimg.features.nets.backbones``     per-backbone specs (weight wheel, input size,
                               preprocessing) and ``build_backbone``.

Nothing here imports ``onnx`` or ``onnxruntime`` at import time.
"""
