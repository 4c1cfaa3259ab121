"""The README is the truth: its code blocks run as written, on real LFW photos (issue 22).

Every fenced ```python and ```bash block of ``README.md`` is listed in :data:`BLOCKS`, a reviewed table
keyed by a hash of the block's text, that says how the block is checked:

* ``run``: executed as written (``exec`` in a fresh namespace, in a temporary working directory where the
  file names the snippet uses are LFW photos, see :func:`photo_dir`);
* ``run_substituted``: executed with the literal replacements of :data:`SUBSTITUTIONS` (each one must
  match, so a stale replacement fails), for what is too expensive for CI (IResNet-50 for 24 epochs);
* ``kfm``: each ``kfm ...`` line runs in-process through ``keras_facemargin.cli.main`` (exit 0), except
  the slow ``kfm export`` lines, which are only parsed by ``build_parser``;
* ``parse``: each command line is parsed only (``kfm`` lines by ``build_parser``, ``examples/*.py`` lines
  by the script's ``parse_args``): they need data sets, GPUs or files a CI run does not have;
* ``skip``: not run, with the reason (``pip install``, the 3-minute demo, the test suite itself).

A new or changed block fails :func:`test_every_readme_block_is_in_the_table` until it is reviewed and
entered here, so the README cannot drift unnoticed. Untagged fences (the layout tree) are prose, not code.

Example::

    python -m pytest tests/test_readme.py -n 0
"""

import ast
import hashlib
import json
import re
import shlex
import shutil

import numpy as np
import pytest

from testing import DATA_DIR, REPO, load_script

README = REPO / "README.md"
CODE_LANGUAGES = {"python", "py", "bash", "sh", "shell", "console"}

# hash -> (first line, how, why). Review a block before adding or updating its row.
BLOCKS = {
    "63b9e2fbe5be": ("import keras_facemargin as kfm", "run",
                     "Use a pretrained model: FaceVerifier().verify of two photos of one person, load, model_info"),
    "f2a3d260a5c9": ("kfm verify alice_1.jpg alice_2.jpg --json", "kfm",
                     "verify, gallery add, identify, embed, models run; export (slow) is parsed only"),
    "e2d7f4785388": ("pip install . && python -m keras_facemargin.demo", "skip",
                     "pip install; the demo trains for ~3 minutes (tests/test_demo.py runs it on a tiny setting)"),
    "9aabb018ff7a": ('pip install ".[test]" && python -m pytest tests', "skip",
                     "pip install, and the test suite itself (this is what .ci/run runs)"),
    "61be658a4ac9": ("import keras, keras_facemargin as kfm", "run_substituted",
                     "Usage: IResNet-50 on 1,000 identities for 24 epochs is hours of CPU; a tiny run instead"),
    "2120102f375a": ("python examples/train_ms1mv2.py --data /data/faces_emore", "parse",
                     "needs MS1MV2 and GPUs (the synthetic default trains for minutes); arguments parsed only"),
    "289d159d0b84": ("head = kfm.layers.PartialFC(kfm.layers.ArcMarginDense(360232), sample_rate=0.1)",
                     "run_substituted",
                     "continues the Usage block's namespace (backbone, keras); 360,232 classes -> 1,000"),
    "5f35441198f6": ("python examples/train_ms1mv2.py --data celeba_identities/color_arcface112", "parse",
                     "trains IResNet-18 on CelebA for hours; arguments parsed only"),
    "635f482817b7": ("kfm evaluate verification --model runs/demo/model.keras --data /data/faces_emore", "parse",
                     "needs faces_emore, IJB-C, a trained run and an insightface checkpoint; parsed only"),
}

# hash -> literal (old, new) replacements, each asserted to match exactly once.
SUBSTITUTIONS = {
    "61be658a4ac9": [
        ("SyntheticFaces(num_identities=1000, image_size=112)",
         "SyntheticFaces(num_identities=20, image_size=32, max_images=8)"),
        ("batch_size=128", "batch_size=16"),
        ("kfm.backbones.IResNet(depth=50)",
         "kfm.backbones.IResNet(depth=50, image_size=32, stage_blocks=(1, 1, 1, 1), stage_filters=(8, 8, 16, 16),"
         " embedding_dim=16)"),
        ("epochs=24", "epochs=1"),
    ],
    "289d159d0b84": [("ArcMarginDense(360232)", "ArcMarginDense(1000)")],
}
CONTINUES = {"289d159d0b84": "61be658a4ac9"}  # block -> the block whose namespace it runs in

# README file names -> LFW photos (name, number); George W. Bush is "alice", Colin Powell fills photos/.
PHOTOS = {"alice_1.jpg": ("George_W_Bush", 1), "alice_2.jpg": ("George_W_Bush", 2),
          "query.jpg": ("George_W_Bush", 3), "photos/powell_1.jpg": ("Colin_Powell", 1),
          "photos/powell_2.jpg": ("Colin_Powell", 2)}


def block_hash(text):
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def readme_blocks():
    """``[(hash, language, text, line number)]`` of the README's fenced code blocks."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```\s*([\w+-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        assert j < len(lines), f"README.md:{i + 1}: unclosed code fence"
        text = "\n".join(lines[i + 1:j])
        if m.group(1).lower() in CODE_LANGUAGES:
            blocks.append((block_hash(text), m.group(1).lower(), text, i + 1))
        i = j + 1
    return blocks


def block(key):
    found = [b for b in readme_blocks() if b[0] == key]
    assert found, f"README block {key} ({BLOCKS[key][0]!r}) is gone: update the table"
    return found[0][2]


def substituted(key):
    text = block(key)
    for old, new in SUBSTITUTIONS.get(key, ()):
        assert text.count(old) == 1, f"substitution {old!r} no longer matches README block {key} exactly once"
        text = text.replace(old, new)
    return text


def command_lines(text):
    """The block's commands: ``\\``-continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)]


def run_python(text, namespace):
    """``exec`` the snippet; a final bare expression is evaluated into ``namespace["_"]`` (as a REPL shows it)."""
    tree = ast.parse(text)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "README.md", "exec"), namespace)  # noqa: S102  (the README's own code)
    if last is not None:
        namespace["_"] = eval(compile(ast.Expression(last.value), "README.md", "eval"), namespace)  # noqa: S307
    return namespace


@pytest.fixture
def photo_dir(tmp_path, monkeypatch):
    """A working directory holding the README's photo names as copies of LFW photos (not symbolic links:
    `kfm embed photos/` refuses links out of the folder unless --follow-links)."""
    images = DATA_DIR / "lfw" / "images"
    if not images.is_dir():
        pytest.skip(f"LFW photos not found at {images} (set KFM_DATA_DIR)")
    for name, (person, number) in PHOTOS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / person / f"{person}_{number:04d}.jpg", tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_readme_block_is_in_the_table():
    """A README code block that is new or changed (another hash) must be reviewed into BLOCKS."""
    blocks = readme_blocks()
    unknown = [f"README.md:{line}: {key} ```{lang} {text.splitlines()[0]!r}" for key, lang, text, line in blocks
               if key not in BLOCKS]
    assert not unknown, "README code blocks not in tests/test_readme.py's table (review them):\n" + "\n".join(unknown)
    stale = set(BLOCKS) - {b[0] for b in blocks}
    assert not stale, f"table rows for README blocks that no longer exist: {sorted(stale)}"
    for key, lang, text, _ in blocks:
        first, how, why = BLOCKS[key]
        assert text.splitlines()[0].startswith(first) and why
        assert how in {"run", "run_substituted", "kfm", "parse", "skip"}
        assert (how == "run_substituted") == (key in SUBSTITUTIONS)
        assert how not in {"run", "run_substituted"} or lang in {"python", "py"}
    assert {how for _, how, _ in BLOCKS.values()} >= {"run", "kfm"}


@pytest.mark.real_data
@pytest.mark.slow
def test_pretrained_snippet_runs_as_written(photo_dir, capsys):
    """'Use a pretrained model': two photos of one person are the same person; thresholds at three FARs."""
    (key,) = [k for k, (_, how, _) in BLOCKS.items() if how == "run"]
    ns = run_python(block(key), {"__name__": "__readme__"})
    result = ns["result"]
    assert result.is_same is True and result.score > 0
    assert capsys.readouterr().out.split()[:2] == [str(result.score), "True"]  # print(result.score, result.is_same)
    assert ns["embedder"] is not None
    thresholds = ns["_"]
    assert {"0.01", "0.001", "0.0001", "accuracy"} <= set(thresholds)
    assert all(0 < float(v) < 1 for v in thresholds.values())


@pytest.mark.real_data
@pytest.mark.slow
def test_kfm_commands_run_as_written(photo_dir, capsys):
    """The shell block: each `kfm` line exits 0, with the answers a person expects."""
    from keras_facemargin.cli import build_parser, main

    ran = []
    for key in [k for k, (_, how, _) in BLOCKS.items() if how == "kfm"]:
        for argv in command_lines(block(key)):
            assert argv[0] == "kfm", argv
            args = argv[1:]
            if args[0] == "export":  # minutes of conversion and a parity report: parse only
                parsed = build_parser("export").parse_args(args)
                assert parsed.command == "export" and parsed.func is not None
                continue
            capsys.readouterr()
            code = main(args)
            out = capsys.readouterr().out
            assert code == 0, (argv, out)
            ran.append(args[0])
            if "--json" in args:
                answers = [json.loads(x) for x in out.splitlines() if x.strip().startswith("{")]
                assert answers, out
                if args[0] == "verify":
                    assert answers[0]["is_same"] is True
                if args[0] == "identify":
                    assert answers[0]["identity"] == "alice" and answers[0]["candidates"]
    assert {"verify", "gallery", "identify", "embed", "models"} <= set(ran)
    with np.load(photo_dir / "embeddings.npz", allow_pickle=False) as z:
        assert z["embeddings"].shape[0] == 2  # the two photos under photos/
        np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_usage_and_partial_fc_snippets_run_with_documented_substitutions(tmp_path, monkeypatch):
    """'Usage' (tiny IResNet, 20 identities, 1 epoch), then 'Partial FC' in its namespace, trained 1 epoch."""
    monkeypatch.chdir(tmp_path)
    namespaces = {}
    for key in [k for k, (_, how, _) in BLOCKS.items() if how == "run_substituted"]:
        ns = namespaces[CONTINUES[key]] if key in CONTINUES else {"__name__": "__readme__"}
        namespaces[key] = run_python(substituted(key), ns)
    ns = namespaces["61be658a4ac9"]
    labels, embeddings = ns["labels"], ns["embeddings"]
    assert embeddings.shape == (len(labels), 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)  # "L2-normalised"
    # Partial FC: the compiled model trains (sampled centres: ceil(0.1 * 1000) >= the batch's classes)
    history = ns["model"].fit(ns["dataset"], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_shell_commands_that_are_not_run_parse():
    """`parse` blocks: every `kfm` line parses with build_parser, every `examples/*.py` line with its parser."""
    from keras_facemargin.cli import build_parser

    parsed = 0
    for key in [k for k, (_, how, _) in BLOCKS.items() if how == "parse"]:
        for argv in command_lines(block(key)):
            if argv[0] == "kfm":
                args = build_parser(argv[1]).parse_args(argv[1:])
                assert args.command == argv[1] and args.func is not None
            else:
                assert argv[0] == "python" and argv[1].startswith("examples/"), argv
                script = load_script(argv[1])
                assert script.parse_args(argv[2:]) is not None
            parsed += 1
    assert parsed == 8  # 3 + 1 train_ms1mv2.py lines, 4 kfm lines
