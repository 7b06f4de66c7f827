"""Evaluation inputs are data, never code, and never a silent wrong answer.

.bin sets, checkpoints and .npy features that carry a pickled payload are refused (a marker file the payload
would create stays absent); ill-typed or too small .bin sets, NaN features, empty or undecodable IJB files are
one-line errors naming the file; `--drop-nonfinite` equals evaluating files that never held the bad images.
"""

import builtins
import codecs
import json
import os
import pickle
import subprocess
import time

import numpy as np
import pytest
import torch

from evaluation.bin_format import BinFormatError, encode_png, load_bin, read_bin, write_bin
from evaluation.embed import verify_bin
from evaluation.identification import search
from evaluation.ijb import IJBFormatError, iter_aligned, load_meta, read_pairs, verify_templates
from evaluation.metrics import NonFiniteError, roc_curve
from evaluation.verification import evaluate
from fr.cli.eval import main as eval_main
from fr.distributed import DistEnv
from fr.train.checkpoint import FORMAT, MANIFEST, load_rank_state, rank_file
from fr.train.model_file import CheckpointError, load_backbone_with, load_state_dict_file

EMBEDDING = 16


class Payload:
    """Pickles as a call of `func(*args)`: what a crafted file runs on a plain `pickle.load`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker):
    """The three classic payloads, each creating `marker` if it ever runs."""
    return [
        Payload(os.system, f"touch {marker}"),
        Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        Payload(subprocess.Popen, ["touch", str(marker)]),
    ]


def assert_one_line(message, *parts):
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, (part, message)


def cli_error(args, capsys):
    """Run fr-eval expecting a user error; its single stderr line."""
    assert eval_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def pixels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_checkpoint):
    """A run directory with a tiny iresnet18 checkpoint and its config.json."""
    path = tmp_path_factory.mktemp("run")
    tiny_checkpoint(path, EMBEDDING)
    return path


# ---------------------------------------------------------------- .bin files: data, never code


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("kind", ["list", "array", "scalars"])
def test_bin_files_of_every_protocol_load_and_payloads_are_refused(tmp_path, protocol, kind):
    images = pixels(4)
    flags = [True, False]
    issame = {"list": flags, "array": np.array(flags), "scalars": [np.bool_(f) for f in flags]}[kind]
    path = tmp_path / "set.bin"
    path.write_bytes(pickle.dumps(([encode_png(im) for im in images], issame), protocol=protocol))
    got, got_issame = load_bin(path, image_size=4)
    np.testing.assert_array_equal(got, images)
    assert got_issame.dtype == np.bool_ and got_issame.tolist() == flags

    marker = tmp_path / "ran"
    for payload in payloads(marker):
        evil = tmp_path / "evil.bin"
        evil.write_bytes(pickle.dumps(([encode_png(im) for im in images], [payload, False]), protocol=protocol))
        with pytest.raises(BinFormatError) as info:
            load_bin(evil, image_size=4)
        assert_one_line(
            str(info.value),
            evil,
            "refused to load global '",
            f".{payload.func.__name__}'",
            "a .bin holds only images and bools",
        )
        assert not marker.exists()


def _py2_string(data, protocol):
    """A Python 2 `str` as cPickle writes it: STRING (protocol 0) or SHORT_BINSTRING (protocol 2)."""
    if protocol == 0:
        return b"S'" + "".join(f"\\x{c:02x}" for c in data).encode() + b"'\n"
    return b"U" + bytes([len(data)]) + data


def py2_numpy_bin(a, b, kind, protocol):
    """`cPickle.dumps(([a, b, a, b], issame), protocol)` as Python 2.7 with numpy 1.x writes it (checked against
    Python 2.7.18's cPickle), issame being `numpy.array([True, False])` or `[numpy.bool_(True), numpy.bool_(False)]`.

    numpy 1.x reduces an array to `_reconstruct(ndarray, (0,), 'b')` plus the state
    `(1, shape, dtype('b1'), False, raw bytes)`, a bool scalar to `scalar(dtype('b1'), '\\x01')`, and a dtype to
    `dtype('b1', 0, 1)` with the state `(3, '|', None, None, None, -1, -1, 0)`.
    """
    if protocol == 0:
        head = b"((lp1\n" + _py2_string(a, 0) + b"p2\na" + _py2_string(b, 0) + b"p3\nag2\nag3\na"
        tails = {
            "array": b"cnumpy.core.multiarray\n_reconstruct\np4\n(cnumpy\nndarray\np5\n(I0\ntp6\nS'b'\ntRp7\n"
            b"(I1\n(I2\ntcnumpy\ndtype\np8\n(S'b1'\np9\nI0\nI1\ntRp10\n(I3\nS'|'\nNNNI-1\nI-1\nI0\n"
            b"tp11\nbI00\nS'\\x01\\x00'\ntbt.",
        }
        return head + tails[kind]
    head = b"\x80\x02]q\x01(" + _py2_string(a, 2) + b"q\x02" + _py2_string(b, 2) + b"q\x03h\x02h\x03e"
    dtype = (
        b"cnumpy\ndtype\nq\x08U\x02b1q\tK\x00K\x01\x87Rq\n(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0bb"
    )
    tails = {
        "array": b"cnumpy.core.multiarray\n_reconstruct\nq\x04cnumpy\nndarray\nq\x05K\x00\x85q\x06U\x01b\x87Rq\x07"
        b"(K\x01K\x02\x85" + dtype + b"\x89U\x02\x01\x00tb\x86.",
        "scalars": b"]q\x04(cnumpy.core.multiarray\nscalar\nq\x05cnumpy\ndtype\nq\x06U\x02b1q\x07K\x00K\x01\x87Rq\x08"
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\tbU\x01\x01\x86Rq\nh\x05h\x06h\x07K\x00K"
        b"\x01\x87Rq\x0bh\tbU\x01\x00\x86Rq\x0ce\x86.",
    }
    return head + tails[kind]


@pytest.mark.parametrize("kind, protocol", [("array", 0), ("array", 2), ("scalars", 2)])
def test_python2_numpy_bin_files_load_and_their_globals_are_checked(tmp_path, kind, protocol):
    images = pixels(2, seed=1)
    a, b = (encode_png(im) for im in images)
    assert len(a) < 256 and len(b) < 256
    raw = py2_numpy_bin(a, b, kind, protocol)
    path = tmp_path / "py2.bin"
    path.write_bytes(raw)
    got, issame = load_bin(path, image_size=4)
    np.testing.assert_array_equal(got, images[[0, 1, 0, 1]])
    assert issame.tolist() == [True, False]
    # The same file naming os.system where numpy's function stood: refused before anything is called.
    numpy_global = b"numpy.core.multiarray\n_reconstruct\n" if kind == "array" else b"numpy.core.multiarray\nscalar\n"
    path.write_bytes(raw.replace(numpy_global, b"os\nsystem\n"))
    with pytest.raises(BinFormatError) as info:
        load_bin(path, image_size=4)
    assert_one_line(str(info.value), path, "refused to load global 'os.system'")


def test_admitted_helpers_refuse_other_uses(tmp_path):
    # _codecs.encode and bytes are admitted as protocol-2 pickles of bytes call them, and only so: another
    # codec, or bytes(n) (n zero bytes, a memory bomb for a large n), is refused.
    for entry, expected in (
        (Payload(codecs.encode, "x", "rot13"), "_codecs.encode called with (str, 'rot13')"),
        (Payload(bytes, 1000), "bytes called with arguments"),
    ):
        raw = pickle.dumps(([entry, entry], [True]), protocol=2)
        assert b"c_codecs\nencode\n" in raw or b"c__builtin__\nbytes\n" in raw  # the globals named above
        path = tmp_path / "odd.bin"
        path.write_bytes(raw)
        with pytest.raises(BinFormatError) as info:
            read_bin(path)
        assert_one_line(str(info.value), path, "not a readable pickle", expected)


def test_bin_payload_is_refused_through_fr_eval(tmp_path, run_dir, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "lfw.bin"
    payload = Payload(os.system, f"touch {marker}")
    evil.write_bytes(pickle.dumps(([encode_png(im) for im in pixels(20)], [payload] * 10)))
    err = cli_error(["verify", "--checkpoint", str(run_dir), "--bin", str(evil)], capsys)
    assert_one_line(err, evil, "refused to load global 'posix.system'")
    assert not marker.exists()


# ---------------------------------------------------------------- .bin files: checked, never misread


@pytest.mark.parametrize(
    "issame, index, shown",
    [
        ([True, "False"], 1, "'False' (str)"),
        (["True", "False"], 0, "'True' (str)"),
        ([1.0, 0.0], 0, "1.0 (float)"),
        ([True, None], 1, "None (NoneType)"),
        ([0, 2], 1, "2 (int)"),
        (np.array(["False", "True"]), 0, "'False' (str)"),
        (np.array([0.0, 1.0]), 0, "0.0 (float)"),
    ],
)
def test_issame_entries_must_be_bools(tmp_path, issame, index, shown):
    path = tmp_path / "flags.bin"
    path.write_bytes(pickle.dumps(([encode_png(im) for im in pixels(4)], issame)))
    with pytest.raises(BinFormatError) as info:
        read_bin(path)
    assert_one_line(str(info.value), path, f"issame entry {index} is {shown}", "expected a bool")


@pytest.mark.parametrize("as_ints", [list, lambda v: np.array(v, np.int64), lambda v: [np.int8(x) for x in v]])
def test_issame_0_and_1_read_as_bools_and_other_integers_are_refused(tmp_path, as_ints):
    path = tmp_path / "ints.bin"
    bins = [encode_png(im) for im in pixels(4)]
    path.write_bytes(pickle.dumps((bins, as_ints([1, 0]))))
    assert read_bin(path)[1].tolist() == [True, False]
    path.write_bytes(pickle.dumps((bins, as_ints([1, 2]))))
    with pytest.raises(BinFormatError) as info:
        read_bin(path)
    assert_one_line(str(info.value), path, "issame entry 1 is 2 (int")


def test_images_must_be_bytes(tmp_path):
    bins = [encode_png(im) for im in pixels(4)]
    bins[1] = "img_1.jpg"
    path = tmp_path / "names.bin"
    path.write_bytes(pickle.dumps((bins, [True, False])))
    with pytest.raises(BinFormatError) as info:
        read_bin(path)
    assert_one_line(str(info.value), path, "image 1 is a str, expected encoded image bytes")


def test_sets_without_pairs_or_with_fewer_pairs_than_folds_are_refused(tmp_path, run_dir, capsys):
    empty, small = tmp_path / "empty.bin", tmp_path / "small.bin"
    write_bin(empty, [], [])
    write_bin(small, [encode_png(im) for im in pixels(4)], [True, False])
    with pytest.raises(BinFormatError) as info:
        load_bin(empty)
    assert_one_line(str(info.value), empty, "holds no pairs")
    assert len(load_bin(small, image_size=4)[1]) == 2  # without a fold count two pairs are a valid file
    with pytest.raises(BinFormatError) as info:
        read_bin(small, nrof_folds=10)
    assert_one_line(str(info.value), small, "2 pairs, fewer than the 10 folds")
    with pytest.raises(BinFormatError, match="fewer than the 10 folds"):
        verify_bin(torch.nn.Flatten(), small, image_size=4)
    for path, expected in ((empty, "holds no pairs"), (small, "2 pairs, fewer than the 10 folds")):
        assert_one_line(cli_error(["verify", "--checkpoint", str(run_dir), "--bin", str(path)], capsys), path, expected)


# ---------------------------------------------------------------- checkpoints: weights only, one line


def test_checkpoint_loaders_refuse_payloads_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.zeros(2), "x": Payload(os.system, f"touch {marker}")}, evil)
    for load in (load_state_dict_file, lambda p: load_backbone_with(p, backbone="iresnet18")):
        with pytest.raises(CheckpointError) as info:
            load(str(evil))
        assert_one_line(str(info.value), evil, "refused to load global 'posix.system'")
    # A training-state file of a resumable run.
    step_dir = tmp_path / "step_00000001"
    step_dir.mkdir()
    rank_path = step_dir / rank_file(0)
    torch.save({"format": FORMAT, "rng": Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")}, rank_path)
    (step_dir / MANIFEST).write_text(
        json.dumps(
            {
                "format": FORMAT,
                "step": 1,
                "world_size": 1,
                "settings": {},
                "files": {rank_file(0): os.path.getsize(rank_path)},
            }
        )
    )
    with pytest.raises(CheckpointError) as info:
        load_rank_state(str(step_dir), DistEnv(), {})
    assert_one_line(str(info.value), rank_path, "refused to load global '")
    assert "eval' (a checkpoint holds only tensors and plain data)" in str(info.value)  # torch may drop 'builtins.'
    assert not marker.exists()


def test_fr_eval_refuses_a_checkpoint_payload(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "model.pt"
    torch.save({"w": Payload(subprocess.Popen, ["touch", str(marker)])}, evil)
    bin_path = tmp_path / "set.bin"
    write_bin(bin_path, [encode_png(im) for im in pixels(20)], [True, False] * 5)
    err = cli_error(["verify", "--checkpoint", str(evil), "--backbone", "iresnet18", "--bin", str(bin_path)], capsys)
    assert_one_line(err, evil, "refused to load global '", ".Popen'")  # subprocess, or its Python 2 name commands
    assert not marker.exists()


def test_an_unreadable_checkpoint_is_one_line_without_torchs_advice(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02\x82\x01.")  # EXT1: an opcode torch's weights-only unpickler does not run
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(str(path))
    assert_one_line(str(info.value), path, "not a readable PyTorch checkpoint (UnpicklingError: Unsupported operand")
    assert "weights_only" not in str(info.value)  # torch's advice to load without it is not passed on


# ---------------------------------------------------------------- non-finite numbers


def test_non_finite_embeddings_and_scores_are_errors():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 8))
    emb[7, 3] = np.nan
    with pytest.raises(NonFiniteError, match=r"embedding row 7 \(pair 3\)"):
        evaluate(emb, [bool(i % 2) for i in range(20)])
    scores = rng.random(10)
    scores[4] = np.inf
    with pytest.raises(NonFiniteError, match="score 4 is inf"):
        roc_curve(scores, np.arange(10) % 2 == 0)
    probes, gallery = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    gallery[1, 0] = np.nan
    with pytest.raises(NonFiniteError, match="probe row 0 against gallery row 1"):
        search(probes, np.array([1, 2, 3]), gallery, np.array([1, 2]))


def test_a_non_finite_template_score_names_the_pair_line(tmp_path):
    pairs = tmp_path / "ijbc_template_pair_label.txt"
    pairs.write_text("1 2 1\n1 3 0\n\n2 3 0\n")
    t1, t2, labels = read_pairs(str(pairs))
    feats = np.eye(3, dtype=np.float32)
    feats[2] = np.nan
    with pytest.raises(NonFiniteError) as info:
        verify_templates(np.array([1, 2, 3]), feats, t1, t2, labels, str(pairs))
    assert_one_line(str(info.value), f"{pairs}:2:", "templates 1 and 3", "2 such pairs")


# ---------------------------------------------------------------- IJB files


SUBJECTS = 4


@pytest.fixture()
def ijb(tmp_path):
    """A text-only IJB-C layout: 8 templates (2 per subject) of 3 images in 2 media, all pairs, two galleries."""
    root = tmp_path / "ijb"
    meta = root / "IJBC" / "meta"
    meta.mkdir(parents=True)
    (root / "IJBC" / "loose_crop").mkdir()
    rng = np.random.default_rng(1)
    tid, lmk, subject_of = [], [], {}
    for subject in range(SUBJECTS):
        for k in range(2):
            template = 100 + 10 * subject + k
            subject_of[template] = subject
            for _j, media in enumerate((2 * template, 2 * template, 2 * template + 1)):
                name = f"{len(tid) + 1}.jpg"
                tid.append(f"{name} {template} {media}")
                points = " ".join(f"{v:.2f}" for v in rng.uniform(20, 90, 10))
                lmk.append(f"{name} {points} {rng.uniform(0.5, 1):.3f}")
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(tid) + "\n")
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lmk) + "\n")
    templates = sorted(subject_of)
    pairs = [(a, b, int(subject_of[a] == subject_of[b])) for i, a in enumerate(templates) for b in templates[i + 1 :]]
    (meta / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {same}\n" for a, b, same in pairs))
    for name, subjects in (("G1", (0, 1, 2)), ("G2", (1, 2, 3))):
        rows = [f"{t},{subject_of[t]}" for t in templates if t % 10 == 0 and subject_of[t] in subjects]
        (meta / f"ijbc_1N_gallery_{name}.csv").write_text("TEMPLATE_ID,SUBJECT_ID\n" + "\n".join(rows) + "\n")
    probes = [f"{t},{subject_of[t]}" for t in templates if t % 10 == 1]
    (meta / "ijbc_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID\n" + "\n".join(probes) + "\n")
    feats = rng.standard_normal((len(tid), 2, EMBEDDING)).astype(np.float32)
    return root, meta, feats


def _without(path, drop):
    """Rewrite a text file without the lines for which `drop(line)` holds."""
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in lines if not drop(line)))


@pytest.mark.parametrize("protocol", ["11", "1n"])
def test_nan_features_are_an_error_naming_the_row(ijb, tmp_path, capsys, protocol):
    root, _, feats = ijb
    feats[4, 1, 2] = np.nan
    path = tmp_path / "f.npy"
    np.save(path, feats)
    err = cli_error(["ijb", "--features", str(path), "--root", str(root), "--protocol", protocol], capsys)
    assert_one_line(err, path, "row 4 (image '5.jpg', template 101)", "1 of 24 rows", "--drop-nonfinite")
    with pytest.raises(NonFiniteError, match="row 4"):
        from evaluation.ijb import evaluate_11

        evaluate_11(load_meta(str(root)), feats)


@pytest.mark.parametrize("protocol", ["11", "1n"])
def test_drop_nonfinite_equals_evaluating_files_without_those_images(ijb, tmp_path, protocol):
    root, meta, feats = ijb
    bad = [3, 4, 5, 7]  # every image of template 101 (subject 0's probe) and one of template 110's
    feats[3, 0, 0] = np.nan
    feats[4, 1, 5] = np.inf
    feats[5] = -np.inf
    feats[7, 0, 1] = np.nan
    path, out = tmp_path / "f.npy", tmp_path / "drop.json"
    np.save(path, feats)
    assert (
        eval_main(
            [
                "ijb",
                "--features",
                str(path),
                "--root",
                str(root),
                "--protocol",
                protocol,
                "--drop-nonfinite",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())

    # Reference: the same layout whose files never held those images, template 101 or its pairs.
    names = {f"{row + 1}.jpg" for row in bad}
    for name in ("ijbc_face_tid_mid.txt", "ijbc_name_5pts_score.txt"):
        _without(meta / name, lambda line: line.split()[0] in names)
    _without(meta / "ijbc_template_pair_label.txt", lambda line: "101" in line.split()[:2])
    _without(meta / "ijbc_1N_probe_mixed.csv", lambda line: line.startswith("101,"))
    ref_path, ref_out = tmp_path / "ref.npy", tmp_path / "ref.json"
    np.save(ref_path, np.delete(feats, bad, axis=0))
    assert (
        eval_main(
            ["ijb", "--features", str(ref_path), "--root", str(root), "--protocol", protocol, "--json", str(ref_out)]
        )
        == 0
    )
    ref = json.loads(ref_out.read_text())
    if protocol == "11":
        assert got["dropped"] == {"images": 4, "templates": 1, "pairs": 7}
        assert ref["dropped"] == {"images": 0, "templates": 0, "pairs": 0}
        for key in ("tar_at_far", "tar_at_far_interpolated", "auc", "num_pairs", "num_templates"):
            assert got[key] == pytest.approx(ref[key]), key
        assert got["num_pairs"] == 28 - 7
    else:
        assert got["dropped"] == {"images": 4, "templates": 1, "probes": 1, "gallery_G1": 0, "gallery_G2": 0}
        for name in ("G1", "G2", "average"):
            assert set(got[name]) == set(ref[name])
            for key, value in ref[name].items():
                assert got[name][key] == pytest.approx(value), (name, key)


def test_empty_ijb_files_are_one_line_errors(ijb, tmp_path, capsys):
    root, meta, feats = ijb
    path = tmp_path / "f.npy"
    np.save(path, feats)
    base = ["ijb", "--features", str(path), "--root", str(root)]
    pairs = meta / "ijbc_template_pair_label.txt"
    text = pairs.read_text()
    pairs.write_text("\n")
    assert_one_line(cli_error(base, capsys), pairs, "no pairs")
    pairs.write_text("".join(line + "\n" for line in text.splitlines() if line.endswith(" 0")))
    assert_one_line(cli_error(base, capsys), pairs, "both genuine (label 1) and impostor (label 0)")
    pairs.write_text(text)
    probes = meta / "ijbc_1N_probe_mixed.csv"
    probes.write_text("TEMPLATE_ID,SUBJECT_ID\n")
    assert_one_line(cli_error(base + ["--protocol", "1n"], capsys), probes, "no rows")
    tid = meta / "ijbc_face_tid_mid.txt"
    tid.write_text("")
    assert_one_line(cli_error(base, capsys), tid, "no rows")


def test_non_finite_landmarks_name_the_line(ijb):
    root, meta, _ = ijb
    lmk = meta / "ijbc_name_5pts_score.txt"
    lines = lmk.read_text().splitlines()
    lines[2] = " ".join(lines[2].split()[:-1] + ["nan"])
    lmk.write_text("\n".join(lines) + "\n")
    with pytest.raises(IJBFormatError, match="ijbc_name_5pts_score.txt:3: landmarks and score must be finite"):
        load_meta(str(root))


def test_npy_feature_files_are_never_unpickled_and_errors_name_them(ijb, tmp_path, capsys):
    root, _, feats = ijb
    marker = tmp_path / "ran"
    cases = {}
    cases["text.npy"] = lambda p: p.write_text("not an array")
    cases["cut.npy"] = lambda p: (np.save(p, feats), p.write_bytes(p.read_bytes()[:200]))
    cases["object.npy"] = lambda p: np.save(
        p, np.array([Payload(os.system, f"touch {marker}")] * len(feats)), allow_pickle=True
    )
    cases["pickle.npy"] = lambda p: p.write_bytes(pickle.dumps(Payload(os.system, f"touch {marker}")))
    cases["strings.npy"] = lambda p: np.save(p, np.array(["a"] * len(feats)))
    cases["archive.npy"] = lambda p: (np.savez(tmp_path / "a.npz", feats), os.replace(tmp_path / "a.npz", p))
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        err = cli_error(["ijb", "--features", str(path), "--root", str(root)], capsys)
        assert_one_line(err, path)
        assert "Errno" not in err
    assert not marker.exists()


def test_image_errors_name_the_image(ijb, run_dir, capsys):
    root, meta, _ = ijb
    crops = root / "IJBC" / "loose_crop"
    rng = np.random.default_rng(2)
    from PIL import Image

    for line in (meta / "ijbc_face_tid_mid.txt").read_text().splitlines():
        Image.fromarray(rng.integers(0, 256, (150, 140, 3), dtype=np.uint8)).save(crops / line.split()[0])
    base = ["ijb", "--checkpoint", str(run_dir), "--root", str(root), "--device", "cpu"]
    (crops / "6.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(IJBFormatError) as info:
        for _ in iter_aligned(load_meta(str(root)), batch_size=4, workers=2):
            pass
    assert_one_line(str(info.value), crops / "6.jpg", "cannot decode image")
    assert_one_line(cli_error(base, capsys), crops / "6.jpg", "cannot decode image")
    os.remove(crops / "6.jpg")
    err = cli_error(base, capsys)
    assert_one_line(err, "image '6.jpg' missing from", "ijbc_face_tid_mid.txt:6")
    assert "np.str_" not in err


def test_a_memo_index_beyond_the_file_is_refused_before_any_allocation(tmp_path):
    # LONG_BINPUT 1.3e9 after an empty list: the C unpickler would grow its memo table to gigabytes.
    path = tmp_path / "memo.bin"
    path.write_bytes(b"\x80\x02]r" + (1_300_000_000).to_bytes(4, "little") + b".")
    started = time.perf_counter()
    with pytest.raises(BinFormatError, match=r"memo.bin: expected a pickled 2-tuple"):
        read_bin(str(path))
    assert time.perf_counter() - started < 1.0  # the C unpickler zeroes ~21 GB here first (over a minute)


def test_a_persistent_id_is_refused_in_one_line(tmp_path):
    path = tmp_path / "persid.bin"
    path.write_bytes(b"\x80\x02X\x01\x00\x00\x00aQ.")  # BINUNICODE 'a', BINPERSID
    with pytest.raises(BinFormatError, match="refused a pickle persistent id") as caught:
        read_bin(str(path))
    assert "\n" not in str(caught.value)
