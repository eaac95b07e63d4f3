"""ImageNet backbones built without torch.

``fastimg.nets.pth``  read a PyTorch ``.pth`` state dict as NumPy arrays.
"""
