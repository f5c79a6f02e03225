"""The embedded default model: EfficientNet-Lite0 with ImageNet weights, built at set-up."""
