"""MTCNN stages with bounded memory: candidates capped by score and an NMS that never builds N x N.

The ``mtcnn`` package (1.0.0) runs non-maximum suppression in ``mtcnn.utils.bboxes.iou`` /
``nms``: for the ``N`` candidate boxes of an image it builds about ten ``(N, N)`` float64
matrices (``iou``'s intersections, areas and ratio; ``nms``'s ``np.triu(np.ones((N, N)))`` and
masks). PNet proposes tens of candidates per face and pyramid scale, so a crowd of 2,500 faces
asks for about 19 GiB there.

The stages here are the package's own (same networks, weights, thresholds and box arithmetic)
with two changes, both in front of each NMS:

* **a cap by score**: only the :data:`NMS_MAX_CANDIDATES` best-scoring candidates of an image go
  into each NMS (PNet per scale, PNet across scales, RNet, ONet); the others are dropped;
* **a blocked NMS** (:func:`blocked_nms`): the same rule as ``mtcnn``'s (a box is dropped when
  any higher-scoring box of its image overlaps it above the threshold) and the same float64
  arithmetic, computed :data:`NMS_BLOCK` columns at a time, so memory is ``O(N * NMS_BLOCK)``.

Below the cap the detections are bit-identical to ``mtcnn``'s (tested). With the cap, the peak
memory of detection does not grow with the number of faces: RNet sees at most
``NMS_MAX_CANDIDATES`` patches of 24x24, ONet at most as many of 48x48 (113 MB of float32).

Example::

    from mtcnn import MTCNN
    det = MTCNN(stages=bounded_stages())        # used by MTCNNDetector
    det.detect_faces(rgb_uint8)
"""

from __future__ import annotations

import numpy as np

__all__ = ["NMS_MAX_CANDIDATES", "NMS_BLOCK", "blocked_nms", "bounded_stages"]

#: Most candidates of one image entering one NMS (the best-scoring ones are kept). 8192 keeps
#: every PNet window of a few hundred faces per scale; the NMS then costs 64 Mi pair tests.
NMS_MAX_CANDIDATES = 8192
#: Patches RNet / ONet evaluate at once (ONet's first activations are 295 KB per patch).
NET_CHUNK = 256
#: Columns of the IoU matrix computed at once (memory ``O(N * NMS_BLOCK)`` float64 values).
NMS_BLOCK = 256


def _iou_block(boxes, areas, rows, cols, method):
    """``mtcnn.utils.bboxes.iou(boxes)[:rows, cols]`` computed for a block only (same formula)."""
    b, a_cols = boxes[cols], areas[cols]
    boxes, areas = boxes[:rows], areas[:rows]
    top = np.maximum(b[None, :, 0], boxes[:, None, 0])
    left = np.maximum(b[None, :, 1], boxes[:, None, 1])
    bottom = np.minimum(b[None, :, 2], boxes[:, None, 2])
    right = np.minimum(b[None, :, 3], boxes[:, None, 3])
    inter = np.maximum(0, bottom - top) * np.maximum(0, right - left)
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "union":
            return inter / (areas[:, None] + a_cols[None, :] - inter)
        if method == "min":
            return inter / np.minimum(areas[:, None], a_cols[None, :])
    raise ValueError("Method should be either 'union' or 'min'.")


def blocked_nms(boxes, threshold, method="union", block=NMS_BLOCK):
    """Indices kept by ``mtcnn``'s NMS rule, without its ``(N, N)`` matrices.

    Box ``j`` is kept when no box ``i < j`` (earlier = higher score) has IoU with it above
    ``threshold`` -- ``mtcnn.utils.bboxes.nms(iou(boxes), threshold)`` exactly, in
    ``O(N * block)`` memory.

    Args:
        boxes: ``(N, 4)`` float corners, sorted best first.
        threshold: IoU above which the later box is dropped.
        method: ``"union"`` (IoU) or ``"min"`` (intersection over the smaller area).
        block: columns computed at once.

    Returns:
        int64 indices of the kept boxes, ascending.

    Example::

        blocked_nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], float), 0.5)  # [0, 2]
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.ones(n, bool)
    for c0 in range(0, n, block):
        cols = np.arange(c0, min(n, c0 + block))
        rows = c0 + len(cols) - 1  # only rows i < j matter; j < c0 + len(cols)
        iou = _iou_block(boxes, areas, rows, cols, method) if rows > 0 else np.zeros((0, len(cols)))
        earlier = np.arange(rows)[:, None] < cols[None, :]
        keep[cols] = ~np.any((iou > threshold) & earlier, axis=0)
    return np.flatnonzero(keep)


def _chunked(model, patches):
    """``model(patches)`` evaluated :data:`NET_CHUNK` patches at a time (outputs concatenated)."""
    import tensorflow as tf

    n = int(patches.shape[0])
    if n <= NET_CHUNK:
        return model(patches)
    parts = [model(patches[i:i + NET_CHUNK]) for i in range(0, n, NET_CHUNK)]
    return tuple(tf.concat([p[k] for p in parts], 0) for k in range(len(parts[0])))


def _capped_nms(bboxes, threshold, method, initial_sort, cap):
    """``mtcnn.utils.bboxes.smart_nms_from_bboxes`` with at most ``cap`` candidates per image."""
    from mtcnn.utils.bboxes import sort_by_scores

    if initial_sort:
        bboxes = sort_by_scores(bboxes, scores=bboxes[:, 5], ascending=False)
    result = []
    for image_id in np.unique(bboxes[:, 0]):
        target = bboxes[bboxes[:, 0] == image_id][:cap]
        result.append(target[blocked_nms(target[:, 1:5], threshold, method)])
    return np.concatenate(result, axis=0) if result else np.empty((0, bboxes.shape[1] if bboxes.ndim == 2 else 6))


def bounded_stages(max_candidates: int = NMS_MAX_CANDIDATES):
    """PNet, RNet and ONet stages for ``mtcnn.MTCNN(stages=...)`` with the capped, blocked NMS.

    Args:
        max_candidates: most candidates of one image entering one NMS (best scores kept).

    Returns:
        list of three stage instances (weights from the ``mtcnn`` wheel).
    """
    from mtcnn.stages import StageONet, StagePNet, StageRNet
    from mtcnn.utils.bboxes import (adjust_bboxes, generate_bounding_box, pick_matches, replace_confidence,
                                    resize_to_square, upscale_bboxes)
    from mtcnn.utils.images import apply_scales, build_scale_pyramid, extract_patches
    from mtcnn.utils.landmarks import adjust_landmarks

    cap = int(max_candidates)
    if cap <= 0:
        raise ValueError(f"`max_candidates` must be a positive integer, got {max_candidates!r}.")

    class BoundedPNet(StagePNet):
        """``StagePNet.__call__`` with the capped NMS (steps as in mtcnn 1.0.0)."""

        def __call__(self, images_normalized, images_oshapes, min_face_size=20, min_size=12, scale_factor=0.709,
                     threshold_pnet=0.6, nms_pnet1=0.5, nms_pnet2=0.7, **kwargs):
            scales_groups = [build_scale_pyramid(shape[1], shape[0], min_face_size=min_face_size,
                                                 scale_factor=scale_factor) for shape in images_oshapes]
            scales_result, scales_index = apply_scales(images_normalized, scales_groups)
            batch_size = images_normalized.shape[0]
            nms = []
            for s, scale in zip(scales_result, scales_index):  # one scale at a time: its maps are freed
                result = self._model(s)
                b = generate_bounding_box(result[0], result[1], threshold_pnet)
                b = upscale_bboxes(b, np.asarray([scale] * batch_size))
                nms.append(_capped_nms(b, nms_pnet1, "union", False, cap))
            bboxes = np.concatenate(nms, axis=0) if nms else np.empty((0, 6))
            bboxes = _capped_nms(bboxes, nms_pnet2, "union", True, cap)
            return resize_to_square(bboxes)

    class BoundedRNet(StageRNet):
        """``StageRNet.__call__`` with the capped NMS."""

        def __call__(self, images_normalized, bboxes_batch, threshold_rnet=0.7, nms_rnet=0.7, **kwargs):
            patches = extract_patches(images_normalized, bboxes_batch, expected_size=(24, 24))
            offsets, scores = _chunked(self._model, patches)
            bboxes = adjust_bboxes(replace_confidence(bboxes_batch, scores), offsets)
            bboxes = pick_matches(bboxes, score_threshold=threshold_rnet)
            return resize_to_square(_capped_nms(bboxes, nms_rnet, "union", True, cap))

    class BoundedONet(StageONet):
        """``StageONet.__call__`` with the capped NMS."""

        def __call__(self, images_normalized, bboxes_batch, threshold_onet=0.8, nms_onet=0.7, **kwargs):
            patches = extract_patches(images_normalized, bboxes_batch, expected_size=(48, 48))
            offsets, landmarks, scores = _chunked(self._model, patches)
            landmarks = adjust_landmarks(landmarks, bboxes_batch)
            bboxes = adjust_bboxes(replace_confidence(bboxes_batch, scores), offsets)
            bboxes = np.concatenate([bboxes, landmarks], axis=-1)
            bboxes = pick_matches(bboxes, scores_column=5, score_threshold=threshold_onet)
            return _capped_nms(bboxes, nms_onet, "min", True, cap)

    return [BoundedPNet(), BoundedRNet(), BoundedONet()]
