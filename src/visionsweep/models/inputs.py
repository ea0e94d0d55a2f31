"""The input normalisation of the ImageNet-pretrained backbones (classifiers and R-CNN trunks)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
