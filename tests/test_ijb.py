"""IJB 1:1 and 1:N end to end on a miniature IJB-C layout built from synthetic faces, against plain loops."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.align import ARCFACE_TEMPLATE, align_face, warp_affine
from evaluation.ijb import load_meta
from fr.cli.eval import main as eval_main
from fr.synth.render import render_identity_images
from tests.helpers.geometry import apply_affine, similarity_matrix

sk_metrics = pytest.importorskip("sklearn.metrics")

SUBJECTS = 6
TEMPLATES_PER_SUBJECT = 3
G1, G2 = (0, 1, 2, 3), (2, 3, 4, 5)  # subjects enrolled in each gallery (first template of each)


def _random_similarity(rng):
    degrees, scale = rng.uniform(-30, 30), rng.uniform(0.8, 1.5)
    return similarity_matrix(scale, degrees, rng.uniform(10, 40), rng.uniform(10, 40))


@pytest.fixture(scope="module")
def layout(tmp_path_factory, tiny_checkpoint):
    """ROOT/IJBC with meta files, loose_crop/ images (faces warped onto a larger canvas) and a tiny model."""
    root = tmp_path_factory.mktemp("ijb")
    base = root / "IJBC"
    (base / "meta").mkdir(parents=True)
    (base / "loose_crop").mkdir()
    rng = np.random.default_rng(0)
    tid_rows, lmk_rows, subject_of = [], [], {}
    image_no, media_no = 0, 1000
    for subject in range(SUBJECTS):
        faces = iter(render_identity_images(5, subject, 12))
        for k in range(TEMPLATES_PER_SUBJECT):
            template = 100 + subject * 10 + k
            subject_of[template] = subject
            for _ in range(int(rng.integers(1, 3))):  # 1-2 media per template
                media_no += 1
                for _ in range(int(rng.integers(1, 3))):  # 1-2 frames per media
                    image_no += 1
                    name = f"{image_no}.png"
                    known = _random_similarity(rng)
                    Image.fromarray(warp_affine(next(faces), known, (200, 190))).save(base / "loose_crop" / name)
                    pts = apply_affine(known, ARCFACE_TEMPLATE)
                    score = rng.uniform(0.5, 1.0)
                    tid_rows.append(f"{name} {template} {media_no}")
                    lmk_rows.append(f"{name} " + " ".join(f"{v:.4f}" for v in pts.ravel()) + f" {score:.4f}")
    (base / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_rows) + "\n")
    (base / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(lmk_rows) + "\n")
    templates = sorted(subject_of)
    pairs = [(a, b, int(subject_of[a] == subject_of[b])) for i, a in enumerate(templates) for b in templates[i + 1 :]]
    (base / "meta" / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {same}\n" for a, b, same in pairs))
    for name, subjects in (("G1", G1), ("G2", G2)):
        rows = [f"{t},{subject_of[t]},x.jpg" for t in templates if t % 10 == 0 and subject_of[t] in subjects]
        (base / "meta" / f"ijbc_1N_gallery_{name}.csv").write_text(
            "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "\n".join(rows)
        )
    probes = [f"{t},{subject_of[t]},y.jpg" for t in templates if t % 10 != 0]
    (base / "meta" / "ijbc_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "\n".join(probes))

    run = root / "run"
    run.mkdir()
    model = tiny_checkpoint(run, 16)
    return root, run, model, subject_of, pairs


def _reference_raw(root, model):
    """Per-image (original, flipped) embeddings computed directly with the model."""
    meta = load_meta(str(root), "IJBC")
    crops = []
    for name, lmk in zip(meta.names, meta.landmarks):
        crops.append(align_face(np.asarray(Image.open(root / "IJBC" / "loose_crop" / name).convert("RGB")), lmk))
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
    with torch.no_grad():
        return np.stack([model(x).numpy(), model(x.flip(3)).numpy()], axis=1), meta


def _reference_templates(raw, meta, flip=True, norm=True, detector=True):
    """Plain-loop template features: F1/N1/D1 per image, mean per media, sum over media, L2-normalised."""
    by_template = {}
    for row in range(len(meta.names)):
        f = raw[row, 0] + raw[row, 1] if flip else raw[row, 0].copy()
        f = f.astype(np.float64)
        if not norm:
            f = f / np.linalg.norm(f)
        if detector:
            f = f * float(meta.det_scores[row])
        by_template.setdefault(int(meta.templates[row]), {}).setdefault(int(meta.medias[row]), []).append(f)
    out = {}
    for t, medias in by_template.items():
        v = sum(np.mean(frames, axis=0) for frames in medias.values())
        out[t] = v / np.linalg.norm(v)
    return out


def _reference_tar(scores, labels, far):
    fpr, tpr, _ = sk_metrics.roc_curve(labels, scores)
    fpr, tpr = fpr[::-1], tpr[::-1]
    best = min(range(len(fpr)), key=lambda i: (abs(fpr[i] - far), i))
    return 100.0 * tpr[best]


@pytest.mark.parametrize("modes", [[], ["--no-norm", "--no-detector"], ["--no-flip"]])
def test_ijb_11_matches_plain_loops(layout, tmp_path, modes):
    root, run, model, subject_of, pairs = layout
    out, feats = tmp_path / "r.json", tmp_path / "f.npy"
    assert (
        eval_main(
            [
                "ijb",
                "--checkpoint",
                str(run),
                "--root",
                str(root),
                "--target",
                "IJBC",
                "--json",
                str(out),
                "--save-features",
                str(feats),
                "--batch-size",
                "7",
            ]
            + modes
        )
        == 0
    )
    got = json.load(open(out))
    raw, meta = _reference_raw(root, model)
    np.testing.assert_allclose(np.load(feats), raw, rtol=1e-4, atol=1e-4)
    tf = _reference_templates(
        raw, meta, flip="--no-flip" not in modes, norm="--no-norm" not in modes, detector="--no-detector" not in modes
    )
    scores = np.array([float(tf[a] @ tf[b]) for a, b, _ in pairs])
    labels = np.array([same for *_, same in pairs])
    assert got["auc"] == pytest.approx(sk_metrics.roc_auc_score(labels, scores), abs=1e-6)
    for key, far in zip(["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"], [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]):
        assert got["tar_at_far"][key] == pytest.approx(_reference_tar(scores, labels, far), abs=1e-6)
    assert got["num_pairs"] == len(pairs)
    # Re-running from the saved features gives the same figures without a model.
    out2 = tmp_path / "r2.json"
    assert eval_main(["ijb", "--features", str(feats), "--root", str(root), "--json", str(out2)] + modes) == 0
    assert json.load(open(out2))["tar_at_far"] == pytest.approx(got["tar_at_far"])


def _reference_1n(tf, subject_of, gallery_subjects, probes):
    gallery = [t for t in sorted(tf) if t % 10 == 0 and subject_of[t] in gallery_subjects]
    mated, nonmated_tops = [], []
    for p in probes:
        s = {subject_of[g]: float(tf[p] @ tf[g]) for g in gallery}
        if subject_of[p] in s:
            mine = s[subject_of[p]]
            rank = 1 + sum(1 for subj, v in s.items() if subj != subject_of[p] and v > mine)
            best_other = max([v for subj, v in s.items() if subj != subject_of[p]], default=-np.inf)
            mated.append((rank, mine, best_other))
        else:
            nonmated_tops.append(max(s.values()))
    nonmated_tops.sort(reverse=True)
    n = len(nonmated_tops)
    cmc = {f"rank{k}": 100.0 * sum(r <= k for r, *_ in mated) / len(mated) for k in (1, 5, 10)}
    tpir, tpir_exact = {}, {}
    for key, f in (("1e-02", 1e-2), ("1e-01", 1e-1)):
        thr = nonmated_tops[max(int(n * f) - 1, 0)]  # insightface's evaluation_1N
        tpir[key] = 100.0 * sum(v > other and v > thr for _, v, other in mated) / len(mated)
        k = int(np.floor(f * n))  # fr's exact FPIR
        thr = nonmated_tops[k] if k < n else -np.inf
        tpir_exact[key] = 100.0 * sum(r == 1 and v > thr for r, v, _ in mated) / len(mated)
    return cmc, tpir, tpir_exact


def test_ijb_1n_matches_plain_loops(layout, tmp_path):
    root, run, model, subject_of, _ = layout
    out = tmp_path / "n.json"
    assert (
        eval_main(["ijb", "--checkpoint", str(run), "--root", str(root), "--protocol", "1n", "--json", str(out)]) == 0
    )
    got = json.load(open(out))
    raw, meta = _reference_raw(root, model)
    tf = _reference_templates(raw, meta)
    probes = [t for t in sorted(tf) if t % 10 != 0]
    for name, subjects in (("G1", G1), ("G2", G2)):
        cmc, tpir, tpir_exact = _reference_1n(tf, subject_of, subjects, probes)
        assert got[name]["cmc"] == pytest.approx(cmc)
        assert got[name]["tpir_at_fpir"] == pytest.approx(tpir)
        assert got[name]["tpir_at_fpir_exact"] == pytest.approx(tpir_exact)
        assert got[name]["num_mated"] + got[name]["num_nonmated"] == len(probes)
    assert got["average"]["cmc"]["rank1"] == pytest.approx((got["G1"]["cmc"]["rank1"] + got["G2"]["cmc"]["rank1"]) / 2)


def test_tpir_threshold_on_a_hand_made_case():
    from evaluation.identification import search

    gallery = np.eye(3, dtype=np.float32)
    gallery_subjects = np.array([10, 20, 30])
    probes = np.array([[0.9, 0.1, 0], [0.2, 0.5, 0.6], [0, 0, 0.7], [0.4, 0.3, 0], [0.1, 0, 0.2]], np.float32)
    subjects = np.array([10, 20, 30, 99, 98])  # the last two are not enrolled
    res = search(probes, subjects, gallery, gallery_subjects, fpir_targets=(0.5, 0.1))
    # Mated ranks: 1, 2 (0.6 > 0.5), 1 -> rank1 = 2/3, rank5 = 1.
    assert res["cmc"]["rank1"] == pytest.approx(200 / 3)
    assert res["cmc"]["rank5"] == pytest.approx(100.0)
    # Non-mated tops 0.4, 0.2. FPIR 0.5 -> k = 1 -> threshold 0.2: probes 0 (0.9) and 2 (0.7) count.
    assert res["tpir_at_fpir"]["5e-01"] == pytest.approx(200 / 3)
    # FPIR 0.1 -> k = 0 -> threshold 0.4: still both.
    assert res["tpir_at_fpir"]["1e-01"] == pytest.approx(200 / 3)


def _copy_layout(root, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(root / "IJBC", dst / "IJBC")
    return dst


def _run_error(args, capsys):
    assert eval_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_bad_inputs_are_one_line_errors_naming_file_and_line(layout, tmp_path, capsys):
    root, run, *_ = layout
    copy = _copy_layout(root, tmp_path)
    meta = copy / "IJBC" / "meta"
    feats = tmp_path / "f.npy"
    n = len((meta / "ijbc_face_tid_mid.txt").read_text().split("\n")) - 1
    np.save(feats, np.ones((n, 2, 16), np.float32))
    base = ["ijb", "--root", str(copy)]
    # A feature file of the wrong length.
    np.save(tmp_path / "short.npy", np.ones((n - 1, 16), np.float32))
    err = _run_error(base + ["--features", str(tmp_path / "short.npy")], capsys)
    assert "short.npy" in err and str(n - 1) in err and str(n) in err
    # A pair naming a template that is not in the template list.
    pairs = (meta / "ijbc_template_pair_label.txt").read_text().split("\n")
    pairs[2] = "100 999 0"
    (meta / "ijbc_template_pair_label.txt").write_text("\n".join(pairs))
    err = _run_error(base + ["--features", str(feats)], capsys)
    assert "ijbc_template_pair_label.txt:3" in err and "999" in err
    # Landmark file one row short.
    lmk = (meta / "ijbc_name_5pts_score.txt").read_text().split("\n")
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lmk[:-2]) + "\n")
    err = _run_error(base + ["--features", str(feats)], capsys)
    assert "ijbc_name_5pts_score.txt" in err and "ijbc_face_tid_mid.txt" in err and str(n - 1) in err
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lmk))
    # A missing image.
    os.remove(copy / "IJBC" / "loose_crop" / "3.png")
    err = _run_error(base + ["--checkpoint", str(run)], capsys)
    assert "'3.png'" in err and "ijbc_face_tid_mid.txt:3" in err and "loose_crop" in err
    # A malformed meta row.
    tid = (meta / "ijbc_face_tid_mid.txt").read_text().split("\n")
    tid[4] = "5.png five 7"
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(tid))
    err = _run_error(base + ["--features", str(feats)], capsys)
    assert "ijbc_face_tid_mid.txt:5" in err


def test_roc_plot_is_written(layout, tmp_path):
    pytest.importorskip("matplotlib")
    root, run, *_ = layout
    feats = tmp_path / "f.npy"
    assert (
        eval_main(
            [
                "ijb",
                "--checkpoint",
                str(run),
                "--root",
                str(root),
                "--save-features",
                str(feats),
                "--plot",
                str(tmp_path / "roc.png"),
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "roc.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    # (N, D) features: taken as already flip-summed.
    summed = np.load(feats).sum(1)
    np.save(tmp_path / "s.npy", summed)
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert eval_main(["ijb", "--features", str(feats), "--root", str(root), "--json", str(out_a)]) == 0
    assert eval_main(["ijb", "--features", str(tmp_path / "s.npy"), "--root", str(root), "--json", str(out_b)]) == 0
    assert json.load(open(out_a))["tar_at_far"] == pytest.approx(json.load(open(out_b))["tar_at_far"])


def _cli_rank(rank, world_size, args):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    return eval_main(args)


def test_embedding_across_ranks_gives_the_single_process_result(layout, tmp_path, run_distributed):
    root, run, *_ = layout
    single, multi = tmp_path / "single", tmp_path / "multi"
    for out in (single, multi):
        out.mkdir()
    common = ["ijb", "--checkpoint", str(run), "--root", str(root), "--device", "cpu"]
    assert eval_main(common + ["--json", str(single / "r.json"), "--save-features", str(single / "f.npy")]) == 0
    codes = run_distributed(
        _cli_rank, 2, common + ["--json", str(multi / "r.json"), "--save-features", str(multi / "f.npy")]
    )
    assert codes == [0, 0]
    np.testing.assert_allclose(np.load(multi / "f.npy"), np.load(single / "f.npy"), rtol=1e-5, atol=1e-5)
    assert json.load(open(multi / "r.json"))["tar_at_far"] == pytest.approx(
        json.load(open(single / "r.json"))["tar_at_far"]
    )


@pytest.mark.parametrize("block_bytes", [64, 4096, 1 << 30])
def test_score_pairs_blocks_equal_row_dots(monkeypatch, block_bytes):
    import evaluation.ijb as ijb

    monkeypatch.setattr(ijb, "DENSE_BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((50, 8)).astype(np.float32)
    i1, i2 = rng.integers(0, 50, 700), rng.integers(10, 40, 700)
    expected = np.array([feats[a] @ feats[b] for a, b in zip(i1, i2)])
    np.testing.assert_allclose(ijb.score_pairs(feats, i1, i2), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("offset, dim, norm", [(0, 6, True), (10**12, 6, False), (0, 1, True), (0, 515, False)])
def test_pooling_is_insightface_arithmetic_and_template_lookup(monkeypatch, offset, dim, norm):
    # Small ids use a lookup table, huge ones a binary search; rows come in no particular order.
    import evaluation.ijb as ijb
    from evaluation.ijb import IJBFormatError, pool_templates, template_rows

    monkeypatch.setattr(ijb, "POOL_CHUNK", 17 if norm else 1 << 17)  # chunks of whole templates, or one chunk

    rng = np.random.default_rng(1)
    n = 300
    templates = rng.integers(0, 40, n) * 7 + offset
    medias = rng.integers(0, 25, n)
    raw = (rng.standard_normal((n, 2, dim)) * 3 + 1).astype(np.float32)
    det = rng.uniform(0.2, 1.0, n).astype(np.float32)
    ids, pooled = pool_templates(raw, templates, medias, det, norm=norm)
    # eval_ijbc.py: float32 image features and media means, the media summed, float64 normalisation.
    feats = raw[:, 0] + raw[:, 1]
    if not norm:
        feats = feats / np.sqrt(np.sum(feats**2, -1, keepdims=True))
    feats = feats * det[:, None]
    expected = np.zeros((len(np.unique(templates)), dim))
    for i, t in enumerate(np.unique(templates)):
        mine = np.flatnonzero(templates == t)
        by_media = [np.mean(feats[mine[medias[mine] == m]], axis=0, keepdims=True) for m in np.unique(medias[mine])]
        expected[i] = np.sum(np.array(by_media), axis=0)
    expected /= np.sqrt(np.einsum("ij,ij->i", expected, expected))[:, None]
    np.testing.assert_array_equal(ids, np.unique(templates))
    np.testing.assert_array_equal(pooled, expected)  # bit for bit
    wanted = ids[rng.integers(0, len(ids), 100)]
    np.testing.assert_array_equal(ids[template_rows(ids, wanted)], wanted)
    with pytest.raises(IJBFormatError, match="template 5 is not"):
        template_rows(ids, np.r_[wanted, 5])


def test_pair_file_parsing_and_errors(tmp_path):
    from evaluation.ijb import IJBFormatError, read_pairs

    path = tmp_path / "ijbc_template_pair_label.txt"
    path.write_text("1 2 1\n\n3 4 0")  # blank line, no final newline
    t1, t2, labels = read_pairs(str(path))
    assert t1.tolist() == [1, 3] and t2.tolist() == [2, 4] and labels.tolist() == [True, False]
    for text, where in (("1 2 1\n1 2\n3 4 0 5\n", ":2:"), ("1 2 1\n3 x 0\n", ":2:"), ("1 2 1\n\n3 4 2\n", ":3:")):
        path.write_text(text)
        with pytest.raises(IJBFormatError, match=f"ijbc_template_pair_label.txt{where}"):
            read_pairs(str(path))


def test_ijb_with_an_onnx_model_matches_pytorch(layout, tmp_path, export_onnx):
    pytest.importorskip("onnxruntime")

    root, run, model, *_ = layout
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path)
    got = {}
    for name, ckpt in (("torch", str(run)), ("onnx", str(onnx_path))):
        out = tmp_path / f"{name}.json"
        assert (
            eval_main(
                [
                    "ijb",
                    "--checkpoint",
                    ckpt,
                    "--root",
                    str(root),
                    "--json",
                    str(out),
                    "--save-features",
                    str(tmp_path / f"{name}.npy"),
                ]
            )
            == 0
        )
        got[name] = json.load(open(out))
    np.testing.assert_allclose(np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy"), rtol=1e-4, atol=1e-4)
    assert got["onnx"]["tar_at_far"] == pytest.approx(got["torch"]["tar_at_far"])
    assert got["onnx"]["auc"] == pytest.approx(got["torch"]["auc"], abs=1e-6)
