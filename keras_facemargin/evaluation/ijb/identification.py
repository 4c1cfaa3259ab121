"""IJB 1:N: open-set identification of probe templates in a gallery (see the package docstring).

Example::

    r = evaluate_ijb_1n(tf, tids, meta)       # {"G1": ..., "G2": ..., "mean": ...}
    r["G1"]["rank"][1], r["G1"]["tpir"][0.01]
"""

from __future__ import annotations

import numpy as np

from keras_facemargin.evaluation._far import floor_threshold
from keras_facemargin.evaluation.ijb.meta import IJBMeta

__all__ = ["identification", "evaluate_ijb_1n"]


def _floor_threshold(neg_scores, target):
    return floor_threshold(np.sort(np.asarray(neg_scores, np.float64))[::-1], target)


def identification(probe_feats, probe_subjects, gallery_feats, gallery_subjects, ranks=(1, 5, 10),
                   fpirs=(1e-2, 1e-1), chunk=4096):
    """Open-set 1:N search of probe templates in one gallery (see module docstring for conventions).

    Args:
        probe_feats: ``(P, d)`` unit-norm probe template features.
        probe_subjects: ``(P,)`` subject ids.
        gallery_feats: ``(G, d)`` unit-norm gallery template features.
        gallery_subjects: ``(G,)`` subject ids.
        ranks: CMC ranks to report (over mated probes).
        fpirs: FPIR targets for TPIR (needs non-mated probes; NaN otherwise).
        chunk: probes per similarity block (memory ``chunk * G`` floats).

    Returns:
        dict: ``rank`` ({k: rate}), ``tpir`` ({fpir: rate}), ``threshold`` ({fpir: t}),
        ``num_mated``, ``num_nonmated``, ``mated_rank`` (``(num_mated,)``), ``nonmated_top1``.

    Example::

        r = identification(pf, ps, gf, gs)
        r["rank"][1], r["tpir"][0.01]
    """
    P = np.asarray(probe_feats, np.float32)
    G = np.asarray(gallery_feats, np.float32)
    ps = np.asarray(probe_subjects).reshape(-1)
    gs = np.asarray(gallery_subjects).reshape(-1)
    if P.ndim != 2 or G.ndim != 2 or P.shape[1] != G.shape[1] or P.shape[0] != ps.size or G.shape[0] != gs.size:
        raise ValueError(f"probe {P.shape}/{ps.shape} and gallery {G.shape}/{gs.shape} features/subjects disagree.")
    mated = np.isin(ps, gs)
    mate_score = np.full(ps.size, -np.inf)
    rank = np.zeros(ps.size, np.int64)
    top1 = np.empty(ps.size)
    for s in range(0, ps.size, int(chunk)):
        e = min(ps.size, s + int(chunk))
        S = (P[s:e] @ G.T).astype(np.float64)
        same = ps[s:e, None] == gs[None, :]
        top1[s:e] = S.max(axis=1)
        ms = np.where(same, S, -np.inf).max(axis=1)
        mate_score[s:e] = ms
        rank[s:e] = 1 + np.sum(np.where(same, -np.inf, S) >= ms[:, None], axis=1)
    mr = rank[mated]
    res = {"rank": {int(k): float(np.mean(mr <= k)) if mr.size else float("nan") for k in ranks},
           "tpir": {}, "threshold": {}, "num_mated": int(mated.sum()), "num_nonmated": int((~mated).sum()),
           "mated_rank": mr, "nonmated_top1": top1[~mated]}
    for f in fpirs:
        if (~mated).sum() == 0 or mated.sum() == 0:
            res["tpir"][float(f)], res["threshold"][float(f)] = float("nan"), float("nan")
            continue
        t = _floor_threshold(top1[~mated], f)
        res["threshold"][float(f)] = float(t)
        res["tpir"][float(f)] = float(np.mean((mr == 1) & (mate_score[mated] > t)))
    return res


def _select(template_feats, template_ids, wanted, what):
    ids = np.asarray(template_ids).astype(np.int64)
    order = np.argsort(ids)
    sids = ids[order]
    pos = np.minimum(np.searchsorted(sids, wanted), sids.size - 1)
    ok = sids[pos] == wanted
    return template_feats[order[pos[ok]]], ok


def evaluate_ijb_1n(template_feats, template_ids, meta: IJBMeta, galleries="separate", **kwargs):
    """1:N on the mixed probes against each gallery of ``meta`` (or the joint G1+G2 closed set).

    Probe / gallery templates missing from ``template_ids`` are excluded and counted in
    ``missing_probe`` / ``missing_gallery`` (nothing is dropped silently).

    Args:
        template_feats, template_ids: from :func:`image_to_template_features`.
        meta: :class:`IJBMeta` with ``probe`` and ``galleries``.
        galleries: ``"separate"`` (NIST protocol, one result per gallery plus their mean) or
            ``"joint"`` (insightface ``ijb_1n.py``: G1 and G2 concatenated).
        **kwargs: :func:`identification` options.

    Returns:
        ``{gallery name: identification dict}`` (plus ``"mean"`` for separate galleries).
    """
    if meta.probe is None or not meta.galleries:
        raise ValueError("meta has no 1:N files (<t>_1N_probe_mixed.csv and gallery csvs).")
    pt, psub = meta.probe
    pf, pok = _select(template_feats, template_ids, pt, "probe")
    if galleries == "joint":
        gal = {"+".join(meta.galleries): tuple(np.concatenate(v) for v in zip(*meta.galleries.values()))}
    elif galleries == "separate":
        gal = dict(meta.galleries)
    else:
        raise ValueError(f"`galleries` must be 'separate' or 'joint', got {galleries!r}.")
    out = {}
    for name, (gt, gsub) in gal.items():
        gf, gok = _select(template_feats, template_ids, gt, name)
        r = identification(pf, psub[pok], gf, gsub[gok], **kwargs)
        r["missing_probe"], r["missing_gallery"] = int((~pok).sum()), int((~gok).sum())
        out[name] = r
    if galleries == "separate" and len(out) > 1:
        vals = list(out.values())
        out["mean"] = {"rank": {k: float(np.mean([v["rank"][k] for v in vals])) for k in vals[0]["rank"]},
                       "tpir": {k: float(np.mean([v["tpir"][k] for v in vals])) for k in vals[0]["tpir"]}}
    return out
