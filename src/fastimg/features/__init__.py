"""Image -> feature vector: the descriptor registry and the descriptors.

* :mod:`fastimg.features.registry` - ``Descriptor``, ``register``, ``get_descriptor``,
  ``describe``, ``describe_many``, ``descriptors`` (re-exported by :mod:`fastimg`);
* :mod:`fastimg.features.classic` - the built-in colour, texture and edge descriptors;
* :mod:`fastimg.features._kernels` - their Numba per-pixel kernels (imported lazily);
* :mod:`fastimg.features.deep` - ``cnn-*`` and ``<backbone>-*`` (``efficientnet-lite0-spoc`` ...):
  CNN convolution maps on onnxruntime;
* :mod:`fastimg.features.pooling` - MAC/SPoC/GeM/R-MAC/CroW/PWA poolings of those maps;
* :mod:`fastimg.features.nets` - ImageNet backbones built from ``.pth`` weights without torch;
* :mod:`fastimg.features.backbone_cache` - their built graphs, cached under the user cache dir.

Importing this package imports nothing heavy (no numba, OpenCV or onnxruntime).
"""
