"""From a photo to its features: what every index holds of a photo, and every query is turned into.

    backbones/         ImageNet CNNs (EfficientNet-Lite, ResNet18) run through onnxruntime
    pooling.py         feature maps to vectors: average (SPoC), MAC, GeM, L2 normalisation
    global_features.py whole-photo and regional CNN descriptors
    whitening.py       PCA-whitening learned from the gallery itself
    local_features.py  SIFT keypoints and descriptors (OpenCV), stored compact
    extractors.py      the extractors of one index, by feature kind
"""
