"""Packaging for uis_d2. detectron2 itself is installed by scripts/setup.sh (see README)."""

from setuptools import find_packages, setup

setup(
    name="uis_d2",
    version="0.1.0",
    description="Unsupervised, class-agnostic instance segmentation on detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=("uis_d2", "uis_d2.*")),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "detectron2",
        "timm>=0.9",
        "safetensors",
        "pycocotools>=2.0.6",
        "fvcore",
        "opencv-python-headless>=4.7",
        "numpy>=1.23",
        "Pillow>=9",
        "tqdm",
        "matplotlib>=3.6",
        "orjson>=3.9",
        "ijson>=3.2",  # streams COCO-scale pseudo-label jsons (data/pseudo_labels.py)
        "numba>=0.60",
        # Connected components (MaskCut, foreground providers), Hungarian matching, the sparse
        # kNN graph and Lanczos solver of the pseudo-class clustering.
        "scipy>=1.10",
        # Leopart's community detection fallback (Louvain), uis_d2/leopart/community.py.
        "networkx>=3.0",
    ],
    extras_require={
        "fast-eval": ["faster-coco-eval>=1.6"],
        # PROPOSALS.REFINE.BACKEND "pydensecrf": the reference dense CRF (a maintained fork of
        # pydensecrf; built from source, needs a C++ compiler). The "torch" backend needs nothing.
        "crf": ["pydensecrf2>=1.1"],
        # Leopart's community detection as the paper runs it (Infomap); without it, Louvain.
        "infomap": ["infomap>=2.0"],
        # scikit-learn: the reference implementations tests and benchmarks compare to.
        "test": [
            "pytest>=7",
            "pytest-xdist>=3.2",  # --dist worksteal
            "hypothesis>=6",
            "ruff",
            "scikit-learn>=1.2",
        ],
    },
)
