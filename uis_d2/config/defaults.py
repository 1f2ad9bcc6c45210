"""Project config keys, added to a detectron2 config the way detectron2's ``projects/`` do.

Every key carries a comment saying what it controls and where its default comes from:
(paper) = printed in Engstler et al. 2023 or FreeSOLO, (ref) = the public reference code,
(open) = our own choice, documented in the README.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config


def add_solov2_config(cfg: CN) -> None:
    """SOLOv2 meta-architecture and FreeSOLO loss keys under ``MODEL.SOLOV2``."""
    _C = cfg
    _C.MODEL.SOLOV2 = CN()
    s = _C.MODEL.SOLOV2
    # Foreground classes; 1 = class-agnostic, as in every unsupervised setting (paper).
    s.NUM_CLASSES = 1
    # FPN levels the instance branch reads, finest first (ref).
    s.INSTANCE_IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # Effective stride of each instance level after p2 is halved and p6 resized to p5 (ref).
    s.FPN_INSTANCE_STRIDES = [8, 8, 16, 32, 32]
    # Inclusive ranges of sqrt(box area) assigned to each level; neighbours overlap (ref).
    s.FPN_SCALE_RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    # S x S grid size per level (ref).
    s.NUM_GRIDS = [40, 36, 24, 16, 12]
    # Centre region: fraction of the half box around the centre of mass marked positive (ref).
    s.SIGMA = 0.2
    # Channels entering the instance branch (= FPN output channels) (ref).
    s.INSTANCE_IN_CHANNELS = 256
    # Width of the category and kernel towers (ref).
    s.INSTANCE_CHANNELS = 512
    # Number of 3x3 convs in each tower (ref).
    s.NUM_INSTANCE_CONVS = 4
    # Output size of a dynamic 1x1 kernel = number of mask-feature channels (ref).
    s.NUM_KERNELS = 256
    # Add normalised (x, y) coordinate channels to the kernel branch input (ref).
    s.USE_COORD_CONV = True
    # Focal-loss prior for the category branch bias (ref).
    s.PRIOR_PROB = 0.01
    # Normalisation in the heads: "GN" or "" (none) (ref).
    s.NORM = "GN"
    # FPN levels merged by the mask-feature branch (ref).
    s.MASK_IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # Channels entering the mask-feature branch (ref).
    s.MASK_IN_CHANNELS = 256
    # Width of the mask-feature branch before the final 1x1 conv (ref).
    s.MASK_CHANNELS = 128
    # Output channels of the mask-feature branch; must equal NUM_KERNELS (ref).
    s.NUM_MASKS = 256
    # Dimension of the semantic-embedding head; 0 reads it from the training pseudo-labels'
    # embeddings (open).
    s.EMBED_DIM = 0

    # --- inference (ref) ---
    # Keep category scores above this before mask decoding.
    s.SCORE_THR = 0.1
    # Binarisation threshold of the soft masks.
    s.MASK_THR = 0.5
    # Candidates entering Matrix NMS (top by score).
    s.NMS_PRE = 500
    # Scores below this after Matrix NMS are dropped.
    s.UPDATE_THR = 0.05
    # Detections kept per image (the COCO protocol's maximum).
    s.MAX_PER_IMG = 100
    # Matrix NMS decay: "gaussian" or "linear".
    s.NMS_KERNEL = "gaussian"
    # Gaussian decay sigma of Matrix NMS.
    s.NMS_SIGMA = 2.0

    # --- losses ---
    s.LOSS = CN()
    # "weak" = FreeSOLO's weak losses (projection Dice + pairwise), "supervised" = full-mask Dice.
    s.LOSS.MODE = "weak"
    # Focal loss on the category grid: alpha, gamma and weight (ref).
    s.LOSS.FOCAL_ALPHA = 0.25
    s.LOSS.FOCAL_GAMMA = 2.0
    s.LOSS.FOCAL_WEIGHT = 1.0
    # Weight of the full-mask Dice loss in supervised mode (ref: 3.0).
    s.LOSS.DICE_WEIGHT = 3.0
    # Weight of the average-projection Dice term, alpha in FreeSOLO eq. 7 (paper: 0.1).
    s.LOSS.AVG_PROJ_WEIGHT = 0.1
    # Weight of the max-projection Dice term (paper: 1.0).
    s.LOSS.MAX_PROJ_WEIGHT = 1.0
    # Weight of the BoxInst pairwise colour-affinity term (paper: 1.0).
    s.LOSS.PAIRWISE_WEIGHT = 1.0
    # Neighbourhood kernel size and dilation of the pairwise term (ref: 3, 2).
    s.LOSS.PAIRWISE_SIZE = 3
    s.LOSS.PAIRWISE_DILATION = 2
    # Pairs whose CIELab similarity is below this are ignored (ref: 0.3).
    s.LOSS.PAIRWISE_COLOR_THRESH = 0.3
    # Iterations over which the pairwise weight ramps linearly from 0 to 1 (ref FreeSOLO: 1000).
    s.LOSS.PAIRWISE_WARMUP_ITERS = 1000
    # Weight beta of the semantic-embedding loss (paper: 4.0); 0 disables it.
    s.LOSS.SEM_WEIGHT = 4.0
    # How the mask terms (Dice, projections, pairwise) average over the positive instances:
    # "level" = over each FPN level's positives, then over the levels that have any (FreeSOLO
    # ref); "instance" = over all positives at once (this project's earlier rule).
    s.LOSS.REDUCTION = "level"


def add_freeze_config(cfg: CN) -> None:
    """Which parts of the model are frozen beyond detectron2's MODEL.BACKBONE.FREEZE_AT (which
    freezes the ResNet: 5 = all of it, the paper's frozen backbone; Base-SOLOv2.yaml sets 5)."""
    cfg.MODEL.FREEZE = CN()
    # Also freeze the FPN lateral and output convs (open: False).
    cfg.MODEL.FREEZE.FPN = False


def add_input_config(cfg: CN) -> None:
    """Pseudo-mask filtering and copy-paste augmentation in the dataset mapper."""
    cfg.INPUT.PSEUDO_MASKS = CN()
    # Pseudo-masks with a `score` below this are dropped when loaded (open: keep all).
    cfg.INPUT.PSEUDO_MASKS.MIN_SCORE = 0.0
    # Pseudo-masks with fewer pixels than this are dropped when loaded (open).
    cfg.INPUT.PSEUDO_MASKS.MIN_AREA = 16
    # Pseudo-label jsons registered before training as [name, json_file, image_root] triples, so
    # that DATASETS.TRAIN can name them; relative paths are under $DETECTRON2_DATASETS (open).
    cfg.INPUT.PSEUDO_MASKS.REGISTER = []
    # Give the model each mask's embedding (gt_embeddings, the target of FreeSOLO's L_sem) and
    # size MODEL.SOLOV2.EMBED_DIM 0 from them; the R-CNN configs set False: their heads have no
    # use for embeddings, so the store is not read (open).
    cfg.INPUT.PSEUDO_MASKS.EMBEDDINGS = True
    # "agnostic": every pseudo-mask is one "object" class (the class-agnostic papers); "pseudo":
    # the file's categories (pseudo-classes, e.g. tools/cluster_pseudo_classes.py's cluster ids)
    # become classes 0..K-1, and MODEL.SOLOV2.NUM_CLASSES / MODEL.ROI_HEADS.NUM_CLASSES must be K
    # (MaskDistill's class-aware distillation) (open).
    cfg.INPUT.PSEUDO_MASKS.CLASSES = "agnostic"

    cfg.INPUT.COPY_PASTE = CN()
    # Paste instances of another training image into the current one (paper, A.2.1).
    cfg.INPUT.COPY_PASTE.ENABLED = True
    # Probability that an image receives pasted instances (open).
    cfg.INPUT.COPY_PASTE.PROB = 0.5
    # Maximum number of instances pasted into one image (open).
    cfg.INPUT.COPY_PASTE.MAX_INSTANCES = 5
    # Pasted instances are rescaled by a factor drawn uniformly from this range (ref CutLER).
    cfg.INPUT.COPY_PASTE.SCALE_RANGE = [0.3, 1.0]
    # Maximum random shift of a pasted instance, as a fraction of the image size (open).
    cfg.INPUT.COPY_PASTE.MAX_SHIFT = 0.5
    # A pasted mask covering at least this fraction of an existing mask is dropped (ref: 0.5).
    cfg.INPUT.COPY_PASTE.OCCLUSION_THRESH = 0.5

    # What to do with an unreadable or corrupt image: "skip" (warn and count) or "fail" (open).
    cfg.INPUT.BAD_IMAGE_POLICY = "skip"


def add_extractor_config(node: CN, name: str, arch: str) -> None:
    """Keys of one dense feature extractor (used for instance and saliency features)."""
    # Registered extractor: "TimmViTKeys", "ResNetDense" or the weight-free "PatchStats".
    node.NAME = name
    # timm model name (ViT) or torchvision ResNet name (ResNetDense).
    node.ARCH = arch
    # Local checkpoint file; "" = random weights (only sensible for tests and benchmarks).
    node.CHECKPOINT = ""
    # Checkpoint layout: "auto", "mae", "dino", "mocov3", "msn", "selfpatch", "densecl",
    # "dinov2" (Meta's DINOv2 files with registers), "leopart" / "leopart_teacher" (a
    # tools/finetune_leopart.py checkpoint or the reference's: student / EMA teacher), "timm".
    node.CHECKPOINT_FORMAT = "auto"
    # ResNet stage whose map is used: "res4" or "res5" (ref FreeSOLO: res5).
    node.RESNET_STAGE = "res5"
    # Patch size of the weight-free extractor, in pixels.
    node.PATCH_SIZE = 16
    # timm architecture arguments overriding ARCH's, as "name=value" strings (Python literals),
    # e.g. ["depth=2", "embed_dim=64", "num_heads=2", "patch_size=8"] for a CPU-sized ViT; a
    # checkpoint must then have been trained with the same ones (open).
    node.MODEL_KWARGS = []


def add_proposals_config(cfg: CN) -> None:
    """Offline pseudo-mask generation (tools/generate_proposals.py)."""
    cfg.PROPOSALS = CN()
    p = cfg.PROPOSALS
    # Registered generator: "SpectralProposalGenerator" (paper), "FreeMaskGenerator" (FreeSOLO),
    # "MaskCutGenerator" (CutLER) or "MaskDistillGenerator" (MaskDistill's object miner).
    p.GENERATOR = "SpectralProposalGenerator"
    # Images per forward pass (open): on a GPU the spectral steps are bound by kernel launches
    # and host syncs per batch, so larger batches pay (compare with benchmarks/bench_proposals.py
    # --full-gpu --batch-size N).
    p.BATCH_SIZE = 32
    # DataLoader workers decoding images (open).
    p.NUM_WORKERS = 4
    # Images are resized so the short side is this many pixels, then cropped to the patch grid
    # (open; CutLER uses 480). 0 keeps the original size.
    p.SHORT_SIDE = 480
    # Upper bound on the long side after resizing, so huge images keep memory bounded (open).
    p.MAX_SIDE = 800
    # Seed of every random choice (k-means initialisation) (open).
    p.SEED = 0
    # Run the ViT feature extractors under bfloat16 autocast on CUDA; no effect on CPU (open:
    # speed, tensor-core matmuls; False gives exact fp32 features).
    p.AMP = True

    p.EXTRACTOR = CN()
    # Instance features: MAE ViT-B/16 keys (paper).
    add_extractor_config(p.EXTRACTOR, "TimmViTKeys", "vit_base_patch16_224")

    p.SPECTRAL = CN()
    # Every k of k-way spectral clustering; 2+3+4+5 = 14 masks per image (paper).
    p.SPECTRAL.K = [2, 3, 4, 5]
    # k-means restarts and iterations on the eigenvector rows (open; 8 greedy k-means++ restarts
    # agree with scikit-learn's n_init=10 at mean ARI 0.985 on benchmarks/bench_proposals.py,
    # 6 at 0.972, 4 at 0.944).
    p.SPECTRAL.KMEANS_RESTARTS = 8
    p.SPECTRAL.KMEANS_ITERS = 50
    # Connected components smaller than this many patches are discarded when splitting (open).
    p.SPECTRAL.MIN_COMPONENT_PATCHES = 2

    p.SALIENCY = CN()
    # Filter candidates with a saliency map (paper; Table 5: 0.6 AP without, 4.5 with DINO).
    p.SALIENCY.ENABLED = True
    # Saliency = k-way clustering of these features, foreground = cluster touching the border less.
    p.SALIENCY.K = 2
    # A candidate is kept when |mask & saliency| / |mask| >= this (paper: 0.5).
    p.SALIENCY.OVERLAP_THRESH = 0.5
    # Foreground providers (FOREGROUND_REGISTRY, uis_d2/foreground/) making the saliency map:
    # "SpectralBorder" (paper: SALIENCY.K-way clustering of the saliency features, foreground =
    # the cluster touching the border less), "AttentionMass" (DINO/Leopart class-token
    # attention), "MaskDistillMiner", "MaskCutUnion", "ExternalMaps"; the saliency features are
    # SALIENCY.EXTRACTOR's. Several names are combined by COMBINE (open).
    p.SALIENCY.PROVIDERS = ["SpectralBorder"]
    # How several providers' maps combine: "intersection" or "union" (open).
    p.SALIENCY.COMBINE = "intersection"
    p.SALIENCY.EXTRACTOR = CN()
    # Saliency features: DINO ViT-B/16 keys (paper).
    add_extractor_config(p.SALIENCY.EXTRACTOR, "TimmViTKeys", "vit_base_patch16_224")

    # Mask NMS IoU threshold removing duplicate proposals (paper: 0.8).
    p.NMS_THRESH = 0.8

    # Settings of the foreground providers other than SpectralBorder (uis_d2/foreground/).
    p.FOREGROUND = CN()
    p.FOREGROUND.ATTENTION_MASS = CN()
    # Heads whose class-token attention is averaged; [] = all (Leopart, DINO: all).
    p.FOREGROUND.ATTENTION_MASS.HEADS = []
    # Keep the patches holding this share of the attention mass (Leopart paper: 0.6; its
    # feature-dump code 0.65; DINO's visualisation: 0.5).
    p.FOREGROUND.ATTENTION_MASS.MASS = 0.6
    # Gaussian blur of the averaged attention before the mass cut: kernel side and sigma in
    # patches (Leopart: 7, 0.6); side 0 disables it.
    p.FOREGROUND.ATTENTION_MASS.BLUR_SIZE = 7
    p.FOREGROUND.ATTENTION_MASS.BLUR_SIGMA = 0.6
    # 8-connected components with at most this many patches are dropped (Leopart: 2).
    p.FOREGROUND.ATTENTION_MASS.MAX_DROPPED_COMPONENT = 2
    # MaskDistill's object miner: the provider "MaskDistillMiner" reads the queries and keys of
    # SALIENCY.EXTRACTOR, the generator "MaskDistillGenerator" those of EXTRACTOR.
    p.FOREGROUND.MINER = CN()
    # Heads averaged in the class-token affinity a_CLS; [] = all (paper; the reference uses the
    # first 5 of DINO ViT-S/16's 6 heads). The key affinity always uses every head (ref).
    p.FOREGROUND.MINER.HEADS = []
    # Share of the patches, by a_CLS, that are candidates (paper: 0.4).
    p.FOREGROUND.MINER.TOP_K = 0.4
    # Before the top-k, keep only the entries of a_CLS holding this share of its mass; 0 = off
    # (ref, not in the paper: 0.5) (open: off).
    p.FOREGROUND.MINER.MASS_PREFILTER = 0.0
    # Keep only the 4-connected component holding the source patch (ref, not in the paper).
    p.FOREGROUND.MINER.SEED_COMPONENT = True
    p.FOREGROUND.EXTERNAL = CN()
    # Folder of saliency maps, one per image: the image's file name relative to its image root,
    # folders kept, extension replaced by SUFFIX (a/b.jpg -> <DIR>/a/b.png); grey values 0-255
    # (e.g. BASNet on DeepUSPS pseudo-labels, as COMUS uses). Missing or unreadable maps follow
    # INPUT.BAD_IMAGE_POLICY (open).
    p.FOREGROUND.EXTERNAL.DIR = ""
    p.FOREGROUND.EXTERNAL.SUFFIX = ".png"
    # Foreground = value / 255 >= this (COMUS: 0.5) ...
    p.FOREGROUND.EXTERNAL.THRESH = 0.5
    # ... and a map with at most this many foreground pixels counts as empty (COMUS: 400).
    p.FOREGROUND.EXTERNAL.MIN_PIXELS = 400
    # "MaskCutUnion": the union of MaskCut's cuts (PROPOSALS.MASKCUT) of SALIENCY.EXTRACTOR's
    # features. True cuts the features of the image as that extractor sees it (SHORT_SIDE /
    # MAX_SIDE, aspect kept), which the spectral generator has already computed when it shares
    # the extractor: no second forward, and the graph has the instance grid's size. False cuts
    # MaskCut's own square input of MASKCUT.INPUT_SIZE: exactly the union of the masks
    # MaskCutGenerator writes, at the cost of a second forward on a larger grid (open; measured
    # in benchmarks/bench_proposals.py --providers).
    # "ForegroundGenerator" (COMUS's salient-object proposal): an image whose foreground map
    # holds at most this many pixels at the image's size gets no proposal (COMUS: 400).
    p.FOREGROUND.MIN_PIXELS = 400
    p.FOREGROUND.MASKCUT_UNION = CN()
    p.FOREGROUND.MASKCUT_UNION.SHARED_FEATURES = True

    p.FREE_MASK = CN()
    # Scales of the query pyramid (paper: 1.0, 0.5, 0.25).
    p.FREE_MASK.QUERY_SCALES = [1.0, 0.5, 0.25]
    # Threshold on the min-max normalised cosine map (paper: 0.5).
    p.FREE_MASK.MASK_THRESH = 0.5
    # Masks with maskness below this are dropped after Matrix NMS (paper: 0.7).
    p.FREE_MASK.MASKNESS_THRESH = 0.7
    # Masks kept per image (ref: 20).
    p.FREE_MASK.MAX_MASKS = 20
    # Drop masks centred in the image's top 20% or spanning >= 95% of its width (ref heuristics).
    p.FREE_MASK.DROP_BORDER_MASKS = True

    # CutLER's MaskCut (GENERATOR "MaskCutGenerator"; features from PROPOSALS.EXTRACTOR, whose
    # SHORT_SIDE/MAX_SIDE it ignores: it resizes every image to a square itself).
    p.MASKCUT = CN()
    # Masks (cuts) per image (ref CutLER README: 3; its demo uses 6).
    p.MASKCUT.NUM_MASKS = 3
    # Side of the square model input, aspect not kept (ref: 480 -> 60 x 60 patches with ViT/8);
    # 0 keeps each image's size (rounded to the patch grid).
    p.MASKCUT.INPUT_SIZE = 480
    # Affinity: 1 where the cosine of two patches' keys exceeds TAU, else EPS (ref README and
    # released annotations: 0.15; the script's default is 0.2).
    p.MASKCUT.TAU = 0.15
    p.MASKCUT.EPS = 1e-5
    # The bipartition (v > mean) is flipped when at least this many of the 4 corner patches lie
    # in it (ref: 3).
    p.MASKCUT.CORNER_LIMIT = 3
    # Cut t > 1 is rejected when its IoU with the previous cut exceeds this (ref: 0.5) ...
    p.MASKCUT.MAX_IOU_WITH_PREVIOUS = 0.5
    # ... or when it covers at most this fraction of the patches (ref: 0.01).
    p.MASKCUT.MIN_PATCH_FRACTION = 0.01
    # Eigensolver of the normalised operator: "auto" (block Krylov on a CPU, subspace iteration
    # on a GPU), "krylov", "subspace", or "eigh" (dense, exact; the reference's cost) (open).
    p.MASKCUT.SOLVER = "auto"
    # Residual ||A'v - mu v|| the iterative solvers stop at (open; benchmarks/bench_maskcut.py
    # measures the agreement with the dense reference).
    p.MASKCUT.TOL = 1e-4
    # Score of cut t (1-based): "constant" = 1.0 for every mask (CutLER writes none) or
    # "cut_order" = 1 / t, so rankings (AP, NMS, MIN_SCORE) prefer earlier cuts (open).
    p.MASKCUT.SCORE = "cut_order"

    # Dense-CRF refinement of every generator's masks before they are written
    # (proposals/refine.py, proposals/dense_crf.py): CutLER's MaskCut post-processing.
    p.REFINE = CN()
    # Refine (ref CutLER maskcut: always; open: off, so runs without it keep their masks).
    p.REFINE.ENABLED = False
    # "torch" (built in, CPU or GPU, appearance kernel on a sparse 5-D grid) or "pydensecrf"
    # (the reference C++ permutohedral lattice, CPU; needs `pip install -e .[crf]`) (open).
    p.REFINE.BACKEND = "torch"
    # Mean-field iterations (ref CutLER maskcut: 10).
    p.REFINE.ITERS = 10
    # Smoothness kernel over (x, y): standard deviation in pixels (ref CutLER maskcut: 3) and
    # Potts weight (ref CutLER maskcut: 7).
    p.REFINE.GAUSSIAN_SXY = 3.0
    p.REFINE.GAUSSIAN_COMPAT = 7.0
    # Appearance kernel over (x, y, r, g, b): standard deviations in pixels (ref CutLER maskcut:
    # 50) and in 0-255 colour units (ref CutLER maskcut: 5), Potts weight (ref CutLER maskcut:
    # 10).
    p.REFINE.BILATERAL_SXY = 50.0
    p.REFINE.BILATERAL_SRGB = 5.0
    p.REFINE.BILATERAL_COMPAT = 10.0
    # The CRF runs on the image resized, aspect kept, so its long side is at most this many
    # pixels (0 = the image's own size); the SXY values are in these pixels (open: CutLER runs
    # it on its 480 x 480 input, aspect not kept; the torch backend's memory grows with it).
    p.REFINE.MAX_SIDE = 480
    # Fill the holes of each refined mask (ref CutLER maskcut: binary_fill_holes).
    p.REFINE.FILL_HOLES = True
    # Drop a mask whose refined version has IoU < this with the coarse one (ref CutLER
    # maskcut: 0.5).
    p.REFINE.MIN_IOU = 0.5


def add_self_training_config(cfg: CN) -> None:
    """FreeSOLO-style self-training rounds."""
    cfg.SELF_TRAINING = CN()
    # Training rounds; round r > 1 trains from MODEL.WEIGHTS on round r-1's predictions (paper: 2).
    cfg.SELF_TRAINING.ROUNDS = 1
    # Predictions scoring at least this become the next round's pseudo-labels (paper: 0.3).
    cfg.SELF_TRAINING.SCORE_THRESH = 0.3
    # Predictions kept per image for the next round (open).
    cfg.SELF_TRAINING.MAX_PER_IMAGE = 100
    # Per-round thresholds instead of SCORE_THRESH: entry r-1 selects round r's predictions for
    # round r+1, so it needs ROUNDS - 1 entries; [] = SCORE_THRESH in every round (ref CutLER:
    # [0.7, 0.65]).
    cfg.SELF_TRAINING.SCORE_THRESHS = []
    # Next round's labels: "none" = the selected predictions only (FreeSOLO); "cutler" = plus
    # the round's own training masks whose mask IoU with every selected prediction of their
    # image is < MERGE_IOU_THRESH (ref CutLER).
    cfg.SELF_TRAINING.MERGE = "none"
    cfg.SELF_TRAINING.MERGE_IOU_THRESH = 0.5  # (ref CutLER: 0.5)


def add_rcnn_config(cfg: CN) -> None:
    """DropLoss for detectron2's R-CNN heads on pseudo-masks (modeling/roi_heads/drop_loss.py)."""
    cfg.MODEL.ROI_HEADS.DROPLOSS = CN()
    # Used by the "DropLossROIHeads" / "DropLossCascadeROIHeads" heads only (CutLER's
    # USE_DROPLOSS): False makes them train as detectron2's heads. Self-training turns it off in
    # rounds r > 1 (ref CutLER).
    cfg.MODEL.ROI_HEADS.DROPLOSS.ENABLED = True
    # A proposal whose regressed box has IoU <= this with every pseudo-box of its image gets no
    # classification or box loss (ref CutLER: DROPLOSS_IOU_THRESH 0.01).
    cfg.MODEL.ROI_HEADS.DROPLOSS.IOU_THRESH = 0.01


def add_semantic_config(cfg: CN) -> None:
    """The semantic stage (uis_d2/semantic/): DeepLab-v3 trained on semantic pseudo-label maps,
    MaskDistill (sec. 3.3) and COMUS (sec. 3.2). detectron2's DeepLab keys come first
    (``add_deeplab_config``: dilations, ASPP, STEM_TYPE, SEM_SEG_HEAD.LOSS_TYPE);
    configs/semantic/Base-DeepLabV3.yaml sets them."""
    add_deeplab_config(cfg)
    # Share of a batch's pixels, ignored ones counted, whose losses the OHEM cross-entropy of
    # "PseudoLabelDeepLabV3Head" averages (LOSS_TYPE "hard_pixel_mining"; MaskDistill: the 20%
    # hardest; at most the valid pixels are kept; 1.0 = plain cross-entropy).
    cfg.MODEL.SEM_SEG_HEAD.OHEM_SHARE = 0.2
    # Optimiser of the Trainer for every model: "SGD" (detectron2's; MaskDistill: lr 2e-3,
    # momentum 0.9, weight decay 1e-4) or "Adam" (COMUS: lr 6e-5, default betas, no weight
    # decay), both with detectron2's parameter groups and gradient clipping; detectron2 v0.6
    # and main have no such key (open).
    cfg.SOLVER.OPTIMIZER = "SGD"

    cfg.SEMANTIC = CN()
    s = cfg.SEMANTIC
    # Semantic pseudo-label folders registered before training, as [name, images, label_dir]
    # triples: images = a registered dataset or a folder:PATH spec; label_dir holds one uint8
    # PNG per image (0 = background, 1..K = pseudo-classes, 255 = ignore) at the image's path
    # relative to the dataset's image root, extension .png; images without a map are left out
    # (COMUS: the images its clustering filter drops). Relative label_dir paths are taken from
    # the working directory (open).
    s.PSEUDO_LABELS = []
    # Side of the square training and prediction input (MaskDistill: 512; COMUS: 512 VOC,
    # 256 COCO); a multiple of 8, the output stride.
    s.INPUT_SIZE = 512
    # Training augmentation: "resized_crop" (COMUS: a random crop resized to the square input,
    # horizontal flip) or "scale_rotate" (MaskDistill: horizontal flip, scale and rotation
    # about the centre, resize to the square input); INPUT.RANDOM_FLIP sets the flip.
    s.AUGMENTATION = "resized_crop"
    # "resized_crop": smallest crop area as a share of the image; each side of the crop is a
    # share of the image's side drawn from [sqrt(MIN_CROP_AREA), 1] (COMUS RandomResizedCrop
    # scale: 0.5 VOC, 0.2 COCO; its upper bounds, 2.0 and 1.0, mean whole-image crops here).
    s.MIN_CROP_AREA = 0.5
    # "scale_rotate": scale factor range and largest rotation in degrees (MaskDistill ref:
    # 0.75-1.25, 5).
    s.SCALE_RANGE = [0.75, 1.25]
    s.ROTATION = 5.0
    # Training rounds (COMUS: 2 on VOC, 1 on COCO). Round r > 1 trains from MODEL.WEIGHTS,
    # never from round r-1's model, on round r-1's predictions for RELABEL_DATASET (hard argmax
    # at INPUT_SIZE, nearest back to the image's size, no confidence filter) (ref COMUS).
    s.ROUNDS = 1
    # Images round r-1's model labels for round r: a registered dataset or folder:PATH
    # (COMUS: VOC train_aug, 10,582 images).
    s.RELABEL_DATASET = ""
    # Epochs of each round; each sets that round's SOLVER.MAX_ITER to ceil(epochs x images /
    # IMS_PER_BATCH) and needs SOLVER.STEPS empty; [] = SOLVER.MAX_ITER in every round (COMUS
    # VOC: [10, 5]; COCO: [1]).
    s.ROUND_EPOCHS = []
    # MaskDistill's optional CRF rounds (paper App. B, ref train_plus_crf.sh): the relabelling
    # pass between rounds refines each prediction with a fully connected multi-label Potts CRF
    # on its softmax and the image, at the square input (open: the ref's size is not
    # documented), before the argmax; the refined maps train the next round. Torch backend of
    # PROPOSALS.REFINE's CRF (proposals/dense_crf.py). Constants: ref (10 iterations; Gaussian
    # sxy 1, compat 3; bilateral sxy 67, srgb 3, compat 4); the paper warns they need a small
    # annotated validation set to tune.
    s.RELABEL_CRF = CN()
    s.RELABEL_CRF.ENABLED = False
    s.RELABEL_CRF.ITERS = 10
    s.RELABEL_CRF.GAUSSIAN_SXY = 1.0
    s.RELABEL_CRF.GAUSSIAN_COMPAT = 3.0
    s.RELABEL_CRF.BILATERAL_SXY = 67.0
    s.RELABEL_CRF.BILATERAL_SRGB = 3.0
    s.RELABEL_CRF.BILATERAL_COMPAT = 4.0
    # How the evaluation on a semantic split maps the K + 1 predicted ids to its classes:
    # any of "hungarian" (one-to-one; MaskDistill, COMUS), "majority" (many-to-one by IoU;
    # COMUS's overclustering), "precision" (many-to-one; Leopart).
    s.EVAL_MATCHINGS = ["hungarian"]
    # Evaluate on a split whose name contains "train" (matching chosen on training images):
    # off, so it never happens by accident; the embedded-data pipelines turn it on to compare a
    # model with the pseudo-labels it was trained on, on the same images (open).
    s.EVAL_ALLOW_TRAIN_SPLIT = False


def add_leopart_config(cfg: CN) -> None:
    """Leopart's dense fine-tuning (tools/finetune_leopart.py; SEED_SYSTEMS.md 3.1-3.6). The
    run itself uses detectron2's keys: DATASETS.TRAIN (images only), SOLVER.IMS_PER_BATCH,
    SOLVER.MAX_ITER, SOLVER.CHECKPOINT_PERIOD, SOLVER.AMP.ENABLED, DATALOADER.NUM_WORKERS,
    INPUT.BAD_IMAGE_POLICY, SEED, OUTPUT_DIR."""
    cfg.LEOPART = CN()
    lp = cfg.LEOPART
    lp.BACKBONE = CN()
    # The student ViT and where its weights start: DINO ViT-S/16, every block trained (paper,
    # ref); the EMA teacher starts as its copy.
    add_extractor_config(lp.BACKBONE, "TimmViTKeys", "vit_small_patch16_224")
    # Stochastic depth of the student (ref 0.1); the teacher runs in eval mode without it.
    lp.DROP_PATH = 0.1
    lp.HEAD = CN()
    # Projection head: a 3-layer MLP, GELU, on every patch token (class token excluded):
    # embed_dim -> 2048 -> 2048 -> 256, output L2-normalised (ref).
    lp.HEAD.HIDDEN_DIM = 2048
    lp.HEAD.OUT_DIM = 256
    # Prototypes: bias-free rows re-normalised before every step (paper Table 1d: 300 best of
    # 100/300/500).
    lp.HEAD.NUM_PROTOTYPES = 300
    lp.CROPS = CN()
    # Global crops: count, side in pixels, area share range (paper: 2 x 224, [0.25, 1]).
    lp.CROPS.NUM_GLOBAL = 2
    lp.CROPS.GLOBAL_SIZE = 224
    lp.CROPS.GLOBAL_SCALE = [0.25, 1.0]
    # Local crops (paper: 4 x 96, [0.05, 0.25]; Table 1b: [2, 4] beats [2] and [2, 2]).
    lp.CROPS.NUM_LOCAL = 4
    lp.CROPS.LOCAL_SIZE = 96
    lp.CROPS.LOCAL_SCALE = [0.05, 0.25]
    # Aspect ratio range of every crop (ref: RandomResizedCrop's default 3/4 - 4/3).
    lp.CROPS.RATIO = [0.75, 1.3333333]
    # A crop is drawn again until it overlaps every global crop by more than this share of the
    # image area (ref 0.01), the two global crops each other by GLOBAL_MIN_OVERLAP (ref 0.02).
    lp.CROPS.MIN_OVERLAP = 0.01
    lp.CROPS.GLOBAL_MIN_OVERLAP = 0.02
    # Draws per crop before the last one is kept; a pair of crops without overlap then adds no
    # loss (open: the ref loops without bound).
    lp.CROPS.MAX_TRIES = 50
    lp.PHOTOMETRIC = CN()
    # Colour jitter brightness, contrast, saturation, hue, applied with JITTER_PROB; grayscale
    # and Gaussian blur probabilities and blur sigma range; no flips, which would break the
    # crops' alignment (ref).
    lp.PHOTOMETRIC.JITTER = [0.8, 0.8, 0.8, 0.2]
    lp.PHOTOMETRIC.JITTER_PROB = 0.8
    lp.PHOTOMETRIC.GRAYSCALE_PROB = 0.2
    lp.PHOTOMETRIC.BLUR_PROB = 0.5
    lp.PHOTOMETRIC.BLUR_SIGMA = [0.1, 2.0]
    # Blur kernel side as a share of the crop side, rounded up to odd (open: DINO's 23 px at 224).
    lp.PHOTOMETRIC.BLUR_KERNEL_SHARE = 0.1
    lp.SINKHORN = CN()
    # Optimal-transport targets: entropy eps and iterations (ref 0.05, 3).
    lp.SINKHORN.EPSILON = 0.05
    lp.SINKHORN.ITERATIONS = 3
    lp.QUEUE = CN()
    # Teacher embeddings prepended to the Sinkhorn batch once the queue is full (ref 8,192 in
    # all, divided over the processes); 0 = no queue.
    lp.QUEUE.SIZE = 8192
    # Foreground teacher embeddings pushed per image and step (ref: 10 x batch size per step).
    lp.QUEUE.PUSH_PER_IMAGE = 10
    lp.LOSS = CN()
    # Softmax temperature of the student's scores (ref 0.1).
    lp.LOSS.TEMPERATURE = 0.1
    # Side of the RoIAlign grid both crops of a pair are aligned to (ref 7).
    lp.LOSS.ROI_SIZE = 7
    # Which tokens the loss reads (paper Table 1a): "foreground" (bins entirely inside the
    # teacher's attention foreground; best), "background" or "all".
    lp.LOSS.TOKENS = "foreground"
    lp.FOREGROUND = CN()
    # The teacher's class-token attention mask of each global crop (paper 3.1): heads averaged
    # ([] = all), 7 x 7 Gaussian blur of sigma 0.6 patches, the patches holding 60% of the mass
    # (paper; the ref's feature dump uses 65%), 8-connected components of <= 2 patches dropped.
    lp.FOREGROUND.HEADS = []
    lp.FOREGROUND.MASS = 0.6
    lp.FOREGROUND.BLUR_SIZE = 7
    lp.FOREGROUND.BLUR_SIGMA = 0.6
    lp.FOREGROUND.MAX_DROPPED_COMPONENT = 2
    lp.OPTIM = CN()
    # AdamW learning rates of the backbone and of the head + prototypes, both decayed to 0 by a
    # per-step cosine (ref 1e-5, 1e-4); SOLVER.BASE_LR is not read.
    lp.OPTIM.BACKBONE_LR = 1e-5
    lp.OPTIM.HEAD_LR = 1e-4
    # Weight decay, cosine from the first to the second value over the run, on weights only
    # (biases and norm parameters: 0) (ref 0.04 -> 0.5).
    lp.OPTIM.WEIGHT_DECAY = [0.04, 0.5]
    # Teacher EMA momentum, cosine from the first to the second value per step (ref 0.9995 -> 1).
    lp.OPTIM.TEACHER_MOMENTUM = [0.9995, 1.0]


def add_uis_config(cfg: CN) -> None:
    """Add every uis_d2 key to a detectron2 config (call before merging a yaml)."""
    add_solov2_config(cfg)
    add_freeze_config(cfg)
    add_input_config(cfg)
    add_proposals_config(cfg)
    add_self_training_config(cfg)
    add_rcnn_config(cfg)
    add_semantic_config(cfg)
    add_leopart_config(cfg)
