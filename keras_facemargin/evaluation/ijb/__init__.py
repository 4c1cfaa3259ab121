"""IJB-B / IJB-C template-based 1:1 verification and 1:N identification.

Layout (insightface's preprocessed IJB release, as read by insightface
``recognition/arcface_torch/eval_ijbc.py`` and ``recognition/_evaluation_/ijb/ijb_1n.py``;
``<t>`` = ``ijbc`` or ``ijbb``)::

    <root>/loose_crop/<image>.jpg               loosely cropped faces (227,630 for IJB-C)
    <root>/meta/<t>_name_5pts_score.txt         "<image> x1 y1 ... x5 y5 <detector score>"
    <root>/meta/<t>_face_tid_mid.txt            "<image> <template id> <media id>"
    <root>/meta/<t>_template_pair_label.txt     "<template 1> <template 2> <label 1|0>" (15,658,489 for IJB-C)
    <root>/meta/<t>_1N_probe_mixed.csv          TEMPLATE_ID,SUBJECT_ID,FILENAME,...   (header row; one row per image)
    <root>/meta/ijbc_1N_gallery_G1.csv, ijbc_1N_gallery_G2.csv   (IJB-B: ijbb_1N_gallery_S1.csv / _S2.csv)

Pipeline (insightface "F2 N1 D1" mode, each step optional):

1. align every image to 112x112 with its 5 landmarks (:func:`keras_facemargin.data.align.align_face`,
   the ArcFace template);
2. image feature ``f(x) + f(flip(x))`` (``flip``), *not* normalised (``normalize_images=False``
   keeps the feature norm as a quality weight -- pass a backbone without L2 normalisation to
   use it; ``FaceRecognizer.embedder`` output is unit-norm), times the detector score (``detector_score``);
3. template feature (:func:`image_to_template_features`, insightface ``image2template_feature``):
   mean over the images of each media (video frames share a media id), *sum* over the
   template's medias, L2-normalise;
4. 1:1 score = cosine of the two template features (:func:`verify_templates`: BLAS GEMM
   similarity blocks when pairs are dense, as in IJB-B/C -- 15.7M IJB-C pairs in ~6 s on 2 loaded
   cores -- else chunked gathers; exact and memory-bounded); TAR at FAR = 1e-6 .. 1e-1
   (:func:`tar_far_table`).

TAR@FAR convention: ``far_convention="floor"`` (default, the package convention of
:func:`~keras_facemargin.evaluation.verification.tar_at_far`: operating point with the largest
FAR not exceeding the target) or ``"nearest"`` (insightface's table: the ROC point whose FPR
is nearest the target, largest TPR among ties; insightface uses sklearn's thinned ROC, which
gives the same value except for collinear tie runs).

1:N (NIST IJB-C open-set protocol; :func:`identification`): each gallery (G1, G2; IJB-B S1, S2)
is searched separately with all mixed probe templates. A probe is *mated* when its subject is
enrolled in that gallery (exactly one gallery template per subject in IJB), else *non-mated*.

* rank-k (CMC) over mated probes: rank = 1 + #{gallery templates of other subjects with score
  >= the mate's score} (ties count against the probe);
* FPIR(t) = fraction of non-mated probes whose best gallery score is ``> t``; TPIR(t) = fraction
  of mated probes whose mate is rank 1 **and** scores ``> t``; ``t`` = the largest-FPIR threshold
  with FPIR <= target (same floor convention), reported at FPIR 1e-2 and 1e-1.

This differs from insightface's ``ijb_1n.py``, which searches G1 and G2 *together* (a closed
set; every probe mated) and derives its "FAR" from all non-mate similarities; pass
``galleries="joint"`` to :func:`evaluate_ijb_1n` for that closed-set variant of rank-k.

Example::

    meta = load_ijb_meta("IJB_release/IJBC", "IJBC")
    feats, scores = extract_ijb_features(model, "IJB_release/IJBC", meta)
    tf, tids = image_to_template_features(feats, meta.templates, meta.medias, scores)
    s = verify_templates(tf, tids, meta.pair_t1, meta.pair_t2)
    print(format_tar_far_table({"model": tar_far_table(s, meta.pair_labels)}))

Modules: :mod:`.meta` (the meta-file readers, :func:`load_ijb_meta`), :mod:`.features` (aligned
image features and template pooling), :mod:`.scores` (1:1 template scores and TAR@FAR),
:mod:`.identification` (1:N) and :mod:`.evaluate` (:func:`evaluate_ijb`, the whole pipeline).
"""

from keras_facemargin.evaluation.ijb.meta import (  # noqa: F401
    IJBFileError,
    IJBMeta,
    load_ijb_meta,
    read_1n_csv,
    read_landmarks_scores,
    read_template_media,
    read_template_pairs,
)
from keras_facemargin.evaluation.ijb.features import (  # noqa: F401
    align_ijb_images,
    extract_ijb_features,
    image_to_template_features,
)
from keras_facemargin.evaluation.ijb.scores import (  # noqa: F401
    IJB_FARS,
    format_tar_far_table,
    tar_far_table,
    verify_cost,
    verify_templates,
)
from keras_facemargin.evaluation.ijb.identification import evaluate_ijb_1n, identification  # noqa: F401
from keras_facemargin.evaluation.ijb.evaluate import evaluate_ijb  # noqa: F401

__all__ = [
    "IJB_FARS",
    "IJBFileError",
    "IJBMeta",
    "read_template_media",
    "read_template_pairs",
    "read_landmarks_scores",
    "read_1n_csv",
    "load_ijb_meta",
    "align_ijb_images",
    "extract_ijb_features",
    "image_to_template_features",
    "verify_templates",
    "verify_cost",
    "tar_far_table",
    "format_tar_far_table",
    "identification",
    "evaluate_ijb_1n",
    "evaluate_ijb",
]
