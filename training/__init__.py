"""Training side of unet_rt: the paper's U-Net and its variants, data,
augmentation, the weight-map loss, metrics, training and TorchScript export.

Run ``python -m training.train --help`` and ``python -m training.export --help``.
"""
