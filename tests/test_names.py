"""Names across the code base: one meaning per public name, one reader of the launch environment, one word for
records that are left out ("skipped"), and the renamed DALI skip list still read under its earlier name."""

import ast
import io
import json
import pathlib
import tokenize
from collections import defaultdict

import pytest

from tests import helpers

ROOT = pathlib.Path(helpers.ROOT)
PACKAGES = ("fr", "evaluation")
# Each command line has its own entry point and argument parser; nothing imports two of them.
SAME_JOB_IN_EACH_MODULE = {"main", "parse_args"}
LAUNCH_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}


def modules(*dirs):
    return sorted(path for d in dirs for path in (ROOT / d).rglob("*.py"))


def _called(value, name):
    """Whether `value` is a call of `name` or `module.name` (e.g. logging.getLogger, TypeVar)."""
    func = value.func if isinstance(value, ast.Call) else None
    return isinstance(func, ast.Name) and func.id == name or isinstance(func, ast.Attribute) and func.attr == name


def public_top_level_names(tree):
    """Functions, classes and assigned names a module defines at its top level, minus the private ones, its
    logger and its type variables (module-local by nature)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            if _called(node.value, "getLogger") or _called(node.value, "TypeVar"):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            yield from (t.id for t in targets if isinstance(t, ast.Name))


def test_no_public_name_means_two_things():
    where = defaultdict(set)
    for path in modules(*PACKAGES):
        for name in public_top_level_names(ast.parse(path.read_text(), str(path))):
            if not name.startswith("_"):
                where[name].add(str(path.relative_to(ROOT)))
    twice = {
        name: sorted(paths) for name, paths in where.items() if len(paths) > 1 and name not in SAME_JOB_IN_EACH_MODULE
    }
    assert not twice, f"public names defined in more than one module: {twice}"
    assert len(where["main"]) >= 3  # the allow-list is in use (fr-train, fr-data, fr-eval)


def reads_launch_environment(source):
    """Whether a module reads the environment (os.environ, os.getenv) and names a launch variable."""
    tree = ast.parse(source)
    reads = any(
        isinstance(node, ast.Attribute)
        and node.attr in ("environ", "getenv")
        or isinstance(node, ast.Name)
        and node.id in ("environ", "getenv")
        for node in ast.walk(tree)
    )
    named = any(isinstance(node, ast.Constant) and node.value in LAUNCH_VARIABLES for node in ast.walk(tree))
    return reads and named


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import os\nrank = int(os.environ.get('RANK', 0))", True),
        ("import os\nworld = os.environ['WORLD_SIZE']", True),
        ("from os import getenv\nlocal = getenv('LOCAL_RANK')", True),
        ("import os\ndistributed = 'LOCAL_WORLD_SIZE' in os.environ", True),
        ("import os\ndef env_int(name):\n    return int(os.environ[name])\nrank = env_int('RANK')", True),
        ("import os\ntraceback = os.environ.get('FR_TRACEBACK')", False),
        ("columns = ['RANK', 'loss']", False),
    ],
)
def test_the_environment_check_sees_every_way_of_reading_it(source, expected):
    assert reads_launch_environment(source) is expected


def test_only_fr_distributed_reads_rank_and_world_size():
    readers = [
        str(path.relative_to(ROOT))
        for path in modules(*PACKAGES, "benchmarks")
        if reads_launch_environment(path.read_text())
    ]
    assert readers == ["fr/distributed.py"]


def test_records_left_out_are_called_skipped_in_fr_identifiers():
    found = set()
    for path in modules(*PACKAGES):
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            word = token.string.lower()
            if token.type == tokenize.NAME and ("garbled" in word or "excluded" in word):
                found.add(f"{path.relative_to(ROOT)}:{token.start[0]}: {token.string}")
    assert not found, sorted(found)


def test_the_dali_skip_list_is_read_under_its_earlier_name_too(tmp_path):
    from fr.data.image_index import add_skipped, read_skipped, skipped_path

    index = str(tmp_path / "train.0123.images.idx")
    (tmp_path / "train.0123.images.idx.undecodable.json").write_text(json.dumps({"12": "found by DALI"}))
    assert read_skipped(index) == {12: "found by DALI"}
    add_skipped(index, {3: "found again"})
    assert skipped_path(index) == index + ".skipped.json"
    assert json.loads(pathlib.Path(skipped_path(index)).read_text()) == {"3": "found again", "12": "found by DALI"}
    assert read_skipped(index) == {3: "found again", 12: "found by DALI"}


def test_a_dali_state_saved_before_the_rename_keeps_its_skipped_keys(tmp_path, record_dir):
    pytest.importorskip("nvidia.dali")
    from fr.data.dali import DaliLoader
    from fr.distributed import DistEnv
    from tests.helpers.images import flat, jpeg

    record_dir(4, 8, image=lambda k: jpeg(flat(8 * k)), root=tmp_path / "set")  # image k: key k + 1, grey value 8k

    def loader():
        return DaliLoader(
            str(tmp_path / "set"),
            4,
            DistEnv(rank=0, world_size=1),
            num_threads=1,
            flip=False,
            cache_dir=str(tmp_path / "cache"),
        )

    state = loader().state_dict()
    state.pop("skipped_keys")
    state["excluded"] = [5]  # the key's earlier name
    resumed = loader()
    resumed.load_state_dict(state)
    assert resumed.skipped_keys == [5]
    seen = {round((float(image[0, 0, 0]) + 1) * 127.5 / 8) for images, _ in resumed for image in images}
    assert 4 not in seen and len(seen) > 20  # image 4 (key 5) left out, the others read
