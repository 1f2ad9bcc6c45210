"""Leopart (Ziegler and Asano, CVPR 2022): dense self-supervised fine-tuning of a ViT
(crops, sinkhorn, alignment, model, training), and fully unsupervised segmentation from its
tokens (cbfe, community)."""
