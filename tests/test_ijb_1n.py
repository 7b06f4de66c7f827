"""IJB 1:N against an independent implementation of insightface's ijb_evals.py (evaluation_1N) and of fr's
exact-FPIR rule, written here from their descriptions, on a layout with tied scores and galleries holding
several templates per subject; then --fpir, the thresholds, the DET/CMC plot and IJB-B's S1/S2."""

import json

import numpy as np
import pytest

from evaluation.identification import search
from fr.cli.eval import main as eval_main

DIM = 12
# Templates built from one of these vectors only (one media, detector score 1) have bit-identical features,
# so their scores tie exactly: mates with non-mates, non-mated top scores with each other and with mates.
# Probes draw from the first two, gallery templates from the last two.
PROTOTYPES = np.array(
    [
        [1, 2, 0, 1, 0, 0, 3, 1, 0, 2, 1, 0],
        [0, 1, 2, 2, 1, 0, 0, 1, 3, 1, 0, 1],
        [2, 1, 1, 0, 0, 1, 1, 3, 0, 0, 1, 2],
        [1, 0, 0, 3, 2, 1, 0, 0, 1, 0, 2, 1],
    ],
    np.float32,
)


def _write_layout(root, target, galleries, seed=0):
    """ROOT/<target>/meta with per-image rows and the 1:N CSVs; returns (features, det, templates, medias, csvs)."""
    rng = np.random.default_rng(seed)
    meta = root / target / "meta"
    meta.mkdir(parents=True)
    centres = rng.standard_normal((60, DIM)).astype(np.float32)
    template_ids = iter(rng.permutation(np.arange(1000, 1600)))  # id order differs from the CSV order
    rows, feats, det, subject_of = [], [], [], {}
    media = 0

    def add_template(subject, prototypes):
        nonlocal media
        t = int(next(template_ids))
        subject_of[t] = subject
        tied = rng.random() < 0.3
        proto = prototypes[rng.integers(len(prototypes))]
        for _ in range(1 if tied else int(rng.integers(1, 4))):  # media
            media += 1
            for _ in range(int(rng.integers(1, 4))):  # frames of one media
                rows.append((t, media))
                if tied:
                    feats.append(np.stack([proto, proto]) / 2)
                    det.append(1.0)
                else:
                    feats.append(centres[subject] + 0.7 * rng.standard_normal((2, DIM)).astype(np.float32))
                    det.append(round(float(rng.uniform(0.3, 1.0)), 3))
        return t

    csvs = {}
    for g, name in enumerate(galleries):  # subjects 0-19 in the first gallery, 20-39 in the second
        csvs[name] = [
            (add_template(s, PROTOTYPES[2:]), s) for s in range(20 * g, 20 * g + 20) for _ in range(rng.integers(1, 4))
        ]
    csvs["probe_mixed"] = [(add_template(s, PROTOTYPES[:2]), s) for s in range(50) for _ in range(rng.integers(1, 3))]
    for name, entries in csvs.items():
        order = rng.permutation(len(entries))
        text = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(f"{entries[i][0]},{entries[i][1]},x.jpg\n" for i in order)
        (meta / f"{target.lower()}_1N_{'' if name == 'probe_mixed' else 'gallery_'}{name}.csv").write_text(text)
    names = [f"{i}.jpg" for i in range(len(rows))]
    (meta / f"{target.lower()}_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {m}\n" for n, (t, m) in zip(names, rows))
    )
    lmk = " ".join(["50.0"] * 10)
    (meta / f"{target.lower()}_name_5pts_score.txt").write_text("".join(f"{n} {lmk} {s}\n" for n, s in zip(names, det)))
    templates, medias = (np.array(c) for c in zip(*rows))
    return np.array(feats, np.float32), np.array(det, np.float32), templates, medias, csvs


def _insightface_templates(raw, det, templates, medias):
    """image2template_feature after process_embeddings (flip sum, norm kept, times the detector score)."""
    feats = (raw[:, 0] + raw[:, 1]) * det[:, None]
    ids = np.unique(templates)
    out = np.zeros((len(ids), raw.shape[-1]))
    for i, t in enumerate(ids):
        mine = np.flatnonzero(templates == t)
        per_media = [np.mean(feats[mine[medias[mine] == m]], axis=0, keepdims=True) for m in np.unique(medias[mine])]
        out[i] = np.sum(np.array(per_media), axis=0)
    return {int(t): f for t, f in zip(ids, out / np.sqrt(np.einsum("ij,ij->i", out, out))[:, None])}


def _listed(entries):
    """(sorted unique template ids, their subjects) of a CSV's entries."""
    ids, first = np.unique([t for t, _ in entries], return_index=True)
    return ids, np.array([entries[i][1] for i in first])


def _reference(tf, gallery, probes, fars):
    """evaluation_1N as described, beside fr's exact-FPIR rule over subjects (best template)."""
    g_ids, g_subj = _listed(gallery)
    p_ids, p_subj = _listed(probes)
    sim = np.array([tf[t] for t in p_ids]) @ np.array([tf[t] for t in g_ids]).T
    hits = dict.fromkeys((1, 5, 10), 0)
    pos, best_other, nonmated = [], [], []
    ranks_fr, own_fr = [], []
    for i, s in enumerate(p_subj):
        if s not in g_subj:
            nonmated.append(sim[i].max())
            continue
        mate = int(np.flatnonzero(g_subj == s)[0])  # the subject's first template in template-id order
        rank = 1 + int(np.sum(sim[i] > sim[i, mate]))  # ties in the probe's favour
        for k in hits:
            hits[k] += rank <= k
        pos.append(sim[i, mate])
        best_other.append(sim[i, g_subj != s].max())
        by_subject = {u: sim[i, g_subj == u].max() for u in set(g_subj.tolist())}
        own_fr.append(by_subject[s])
        ranks_fr.append(1 + sum(v > by_subject[s] for u, v in by_subject.items() if u != s))
    pos, best_other, ranks_fr, own_fr = map(np.array, (pos, best_other, ranks_fr, own_fr))
    nonmated = np.sort(nonmated)[::-1]
    out = {"thresholds": {}, "tpir": {}, "thresholds_exact": {}, "tpir_exact": {}}
    for key, f in fars.items():
        thr = nonmated[max(int(len(nonmated) * f) - 1, 0)]
        out["thresholds"][key] = thr
        out["tpir"][key] = 100.0 * np.sum((pos > best_other) & (pos > thr)) / len(pos)
        k = int(np.floor(f * len(nonmated)))
        thr_exact = nonmated[k] if k < len(nonmated) else -np.inf
        out["thresholds_exact"][key] = thr_exact
        out["tpir_exact"][key] = 100.0 * np.sum((ranks_fr == 1) & (own_fr > thr_exact)) / len(pos)
    out["cmc"] = {f"rank{k}": 100.0 * np.mean(ranks_fr <= k) for k in (1, 5, 10)}
    out["hits"] = {f"rank{k}": v for k, v in hits.items()}
    out["ties"] = int(np.sum(pos == best_other)) + int(np.sum(np.isin(pos, nonmated)))
    out["num_probes"] = len(p_ids)
    return out


FARS = {"1e-03": 1e-3, "1e-02": 1e-2, "1e-01": 1e-1, "3e-01": 0.3}


@pytest.mark.parametrize("target, galleries", [("IJBC", ("G1", "G2")), ("IJBB", ("S1", "S2"))])
def test_1n_equals_an_independent_insightface_evaluation(tmp_path, target, galleries):
    raw, det, templates, medias, csvs = _write_layout(tmp_path, target, galleries)
    np.save(tmp_path / "f.npy", raw)
    out, plot = tmp_path / "n.json", tmp_path / "det_cmc.png"
    args = ["ijb", "--features", str(tmp_path / "f.npy"), "--root", str(tmp_path), "--target", target]
    args += ["--protocol", "1n", "--fpir", ",".join(map(str, FARS.values())), "--json", str(out), "--plot", str(plot)]
    assert eval_main(args) == 0
    got = json.loads(out.read_text())
    tf = _insightface_templates(raw, det, templates, medias)
    refs = {name: _reference(tf, csvs[name], csvs["probe_mixed"], FARS) for name in galleries}
    for name, ref in refs.items():
        res = got[name]
        assert ref["ties"] > 0  # the layout exercises the strict comparisons
        assert res["thresholds"] == ref["thresholds"]  # the very same float64 scores
        assert res["tpir_at_fpir"] == pytest.approx(ref["tpir"], abs=1e-9)
        assert res["thresholds_exact"] == {k: (None if v == -np.inf else v) for k, v in ref["thresholds_exact"].items()}
        assert res["tpir_at_fpir_exact"] == pytest.approx(ref["tpir_exact"], abs=1e-9)
        assert res["cmc"] == pytest.approx(ref["cmc"], abs=1e-9)
        assert res["top_k_hits"] == ref["hits"]
        assert res["num_mated"] + res["num_nonmated"] == ref["num_probes"]
    # The two rules differ on this layout, so neither key can stand in for the other.
    assert any(got[n]["tpir_at_fpir"] != got[n]["tpir_at_fpir_exact"] for n in galleries)
    average = got["average"]
    for key in FARS:  # ijb_evals.py's mean TPIR: the plain mean of the two galleries'
        assert average["tpir_at_fpir"][key] == pytest.approx(np.mean([refs[n]["tpir"][key] for n in galleries]))
    n_probes = refs[galleries[0]]["num_probes"]
    assert average["num_probes"] == n_probes
    for k in ("rank1", "rank5", "rank10"):  # "[Mean] top-k": hits of both galleries over all probes
        assert average["cmc_pooled"][k] == pytest.approx(100.0 * sum(refs[n]["hits"][k] for n in galleries) / n_probes)
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_two_rules_on_a_hand_made_gallery():
    # Gallery: subject 1 has two templates, the first (row 0) scoring below the second for probe 0.
    gallery = np.eye(4, dtype=np.float32)
    gallery_subjects = np.array([1, 1, 2, 3])
    probes = np.array(
        [
            [0.5, 0.9, 0.6, 0.0],  # subject 1: first template 0.5 < subject 2's 0.6 < its best 0.9
            [0.0, 0.0, 0.8, 0.8],  # subject 2, tied with subject 3: rank 1 for fr, not above every non-mate
            [0.0, 0.0, 0.0, 0.9],  # subject 3
        ]
        + [[0.0, 0.0, 0.0, s] for s in (0.7, 0.6, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01)],  # 10 non-mated
        np.float32,
    )
    subjects = np.array([1, 2, 3] + [9] * 10)
    res = search(probes, subjects, gallery, gallery_subjects, fpir_targets=(0.1, 0.25))
    # insightface: FPIR 0.1 -> index max(int(10 * 0.1) - 1, 0) = 0 -> 0.7; FPIR 0.25 -> index 1 -> 0.6.
    assert res["thresholds"] == pytest.approx({"1e-01": 0.7, "2.5e-01": 0.6})
    # Only probe 2 (0.9 > 0.8 > 0.7) has its first mate template above every non-mate.
    assert res["tpir_at_fpir"] == pytest.approx({"1e-01": 100 / 3, "2.5e-01": 100 / 3})
    # exact: FPIR 0.1 -> index 1 -> 0.6; FPIR 0.25 -> index 2 -> 0.6. fr ranks subjects by their best template:
    # probes 0 (0.9), 1 (0.8, tied first) and 2 count.
    assert res["thresholds_exact"] == pytest.approx({"1e-01": 0.6, "2.5e-01": 0.6})
    assert res["tpir_at_fpir_exact"] == pytest.approx({"1e-01": 100.0, "2.5e-01": 100.0})
    # Template ranks of the first mate: probe 0's template 0 has 0.9 and 0.6 above it.
    assert res["top_k_hits"] == {"rank1": 2, "rank5": 3, "rank10": 3}
    assert res["cmc"]["rank1"] == pytest.approx(100.0)


def test_bad_fpir_is_a_one_line_usage_error(tmp_path, capsys):
    raw, *_ = _write_layout(tmp_path, "IJBC", ("G1", "G2"), seed=1)
    np.save(tmp_path / "f.npy", raw)
    base = ["ijb", "--features", str(tmp_path / "f.npy"), "--root", str(tmp_path), "--protocol", "1n"]
    for bad in ("0.01,x", "0,0.1", "2"):
        assert eval_main(base + ["--fpir", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--fpir {bad}" in err
