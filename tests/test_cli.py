"""The ``fastimg`` command line, run as the real console script in a subprocess.

Oracles: JSON output is parsed and compared with the library's own
``Index.search`` on the same index, files are re-read (the index with
``Index.open``, the HTML page with an HTML parser, thumbnails with OpenCV), exit
codes are checked exactly, and ``dedup`` is compared with a NumPy brute force over
every pair plus SciPy's connected components.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import fastimg
from fastimg import cli
from fastimg.cli.common import json_default
from fastimg.dedup import THRESHOLDS

BIN = Path(sys.executable).with_name("fastimg")
CLASSES = ("beaches", "dinosaurs", "horses")
PER_CLASS = 4
HEAVY = ("numba", "cv2", "hnswlib", "dask", "distributed", "fastapi", "uvicorn", "starlette", "pydantic")


# --------------------------------------------------------------------------- #
# helpers and fixtures
# --------------------------------------------------------------------------- #

def run(*args: str | os.PathLike, env: dict | None = None, cwd: Path | None = None,
        python_m: bool = False, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script (or ``python -m fastimg``)."""
    full_env = {k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "fastimg"] if python_m else [str(BIN)]
    res = subprocess.run([*cmd, *map(str, args)], capture_output=True, env=full_env, cwd=cwd, timeout=300,
                         **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))
    return subprocess.CompletedProcess(res.args, res.returncode, res.stdout.decode(), res.stderr.decode())


def ok_json(*args: str | os.PathLike, **kw) -> object:
    res = run(*args, **kw)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def assert_one_line_error(res: subprocess.CompletedProcess, code: int = 1) -> str:
    """Exit ``code``, nothing on stdout, exactly one ``fastimg: error:`` line on stderr."""
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    if code == 1:
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith("fastimg: error: "), res.stderr
    else:  # usage: argparse's usage block, then "<prog>: error: ..."
        assert lines[0].startswith("usage: fastimg"), res.stderr
        assert lines[-1].startswith("fastimg") and ": error: " in lines[-1], res.stderr
    assert res.stdout == ""
    return lines[-1]


def copy_images(corel: Path, dest: Path, classes=CLASSES, per_class=PER_CLASS) -> list[Path]:
    out = []
    for cls in classes:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for src in sorted((corel / cls).glob("*.jpg"))[:per_class]:
            shutil.copy2(src, dest / cls / src.name)
            out.append((dest / cls / src.name).resolve())
    return out


def resolved(p: str) -> str:
    return str(Path(p).resolve())


@pytest.fixture(scope="session", autouse=True)
def _isolated_locations(tmp_path_factory):
    """No test may touch the user's default index: FASTIMG_DATADIR points into tmp."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTIMG_DATADIR", str(tmp_path_factory.mktemp("datadir")))
    mp.delenv("FASTIMG_INDEX", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def photos(corel_dir: Path, tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("photos")
    return root, copy_images(corel_dir, root)


@pytest.fixture(scope="session")
def built(photos, tmp_path_factory) -> tuple[Path, dict]:
    """An index of the 12 photos built by ``fastimg index --json``; (path, summary)."""
    root, files = photos
    idx = tmp_path_factory.mktemp("idx") / "photos.fastimg"
    summary = ok_json("index", root, "--index", idx, "--json")
    return idx, summary


def library_hits(idx: Path, query, k: int, **kw) -> list[dict]:
    from fastimg.index import Index

    with Index.open(idx, mode="r") as index:
        hits = index.search(query if isinstance(query, bytes) else str(query), k, **kw)
    return [{"rank": int(h.rank), "id": int(h.id), "path": str(h.path), "score": float(h.score)}
            for h in hits]


def index_len(idx: Path) -> int:
    from fastimg.index import Index

    with Index.open(idx, mode="r") as index:
        return len(index)


def index_deleted(idx: Path) -> list[int]:
    from fastimg.index import Index

    with Index.open(idx, mode="r") as index:
        return index.deleted_ids().tolist()


def index_info(idx: Path) -> dict:
    from fastimg.index import Index

    with Index.open(idx, mode="r") as index:
        return json.loads(json.dumps(index.info(), default=json_default))


# --------------------------------------------------------------------------- #
# help, version, start-up
# --------------------------------------------------------------------------- #

COMMANDS = ("index", "query", "info", "remove", "compact", "dedup", "descriptors", "eval")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_has_examples_and_exit_codes(command):
    res = run(*([command] if command else []), "--help")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    start = lines.index("examples:")
    examples = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        examples.append(line.strip())
    assert examples, res.stdout
    want = "fastimg " + (command or "")
    import re

    assert all(re.search(r"(^|\|\s*)fastimg ", e) for e in examples), examples  # maybe after a pipe
    assert any(e.startswith(want) for e in examples), examples
    assert "exit status: 0 ok, 1 error (one line on stderr), 2 usage error." in lines


def test_version_from_console_script_and_python_m():
    for res in (run("--version"), run("--version", python_m=True)):
        assert res.returncode == 0
        assert res.stdout == f"fastimg {fastimg.__version__}\n"


def _imported_modules(*args: str) -> set[str]:
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "fastimg", *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    names = set()
    for line in res.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


@pytest.mark.parametrize("args", [("--help",), ("query", "--help"), ("index", "--help"), ("dedup", "--help"), ("serve", "--help"),
                                  ("--version",)])
def test_help_does_not_import_heavy_modules(args):
    names = _imported_modules(*args)
    assert "fastimg.cli" in names  # the parse saw the CLI itself being imported
    tops = {n.split(".")[0] for n in names}
    assert not tops & set(HEAVY), sorted(tops & set(HEAVY))
    assert "numpy" not in tops


def test_no_command_prints_help_and_exits_2():
    res = run()
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.startswith("usage: fastimg")


@pytest.mark.parametrize("args", [
    ("frobnicate",),
    ("query",),
    ("query", "a.jpg", "-k", "0"),
    ("query", "a.jpg", "-k", "three"),
    ("query", "a.jpg", "--exact", "--ann"),
    ("query", "a.jpg", "--exact", "--ef", "50"),
    ("query", "a.jpg", "--metric", "no-such-metric"),
    ("index",),
    ("index", ".", "--workers", "0"),
    ("dedup", "--threshold", "nan"),
])
def test_usage_errors_exit_2(args, tmp_path):
    assert_one_line_error(run(*args, "--index", tmp_path / "none", cwd=tmp_path), code=2)


def test_unknown_metric_lists_the_valid_ones(tmp_path):
    line = assert_one_line_error(run("query", "a.jpg", "--metric", "nope", "--index", tmp_path / "x"), 2)
    from fastimg.metrics import metric_names

    listed = line.split("choose one of: ", 1)[1].split(", ")
    assert listed == metric_names()


# --------------------------------------------------------------------------- #
# index
# --------------------------------------------------------------------------- #

def test_index_summary_and_contents(built, photos):
    idx, summary = built
    root, files = photos
    assert summary["index"] == str(idx.resolve())
    assert summary["created"] is True
    assert (summary["added"], summary["unchanged"], summary["updated"], summary["moved"], summary["removed"],
            summary["skipped"]) == (len(files), 0, 0, 0, 0, 0)
    assert summary["count"] == len(files) == index_len(idx)
    from fastimg.index import Index

    with Index.open(idx, mode="r") as index:
        paths = {resolved(p) for p in index.paths(list(range(len(index))))}
    assert paths == {str(f) for f in files}


def test_index_again_is_incremental(photos, tmp_path):
    root, files = photos
    work = tmp_path / "p"
    shutil.copytree(root, work)
    idx = tmp_path / "i"
    first = ok_json("index", work, "--index", idx, "--json")
    assert first["added"] == len(files)
    again = ok_json("index", work, "--index", idx, "--json")
    assert (again["created"], again["added"], again["unchanged"], again["updated"], again["removed"]) == \
        (False, 0, len(files), 0, 0)
    # one new file, one changed file, one deleted file
    a, b, c = sorted(work.rglob("*.jpg"))[:3]
    last = sorted(work.rglob("*.jpg"))[-1]
    shutil.copy2(a, work / "new.jpg")
    shutil.copyfile(c, b)  # b now has c's (different) content
    os.utime(b, (1, 1))
    last.unlink()
    third = ok_json("index", work, "--index", idx, "--json")
    assert (third["added"], third["updated"], third["removed"]) == (1, 1, 1)
    assert third["count"] == len(files) == index_len(idx)
    # a renamed file keeps its row: "moved", nothing added or removed
    a.rename(a.with_name("renamed.jpg"))
    fourth = ok_json("index", work, "--index", idx, "--json")
    assert (fourth["added"], fourth["moved"], fourth["removed"], fourth["count"]) == (0, 1, 0, len(files))
    res = run("index", work, "--index", idx)
    assert res.stdout.startswith(f"updated {idx.resolve()}: {len(files)} images (0 added, {len(files)} unchanged,")


def test_index_is_quiet_when_piped(photos, tmp_path):
    """Not a terminal: no progress bar on stderr, just the summary on stdout."""
    root, files = photos
    res = run("index", root / CLASSES[0], "--index", tmp_path / "i")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"created {(tmp_path / 'i').resolve()}: {PER_CLASS} images ({PER_CLASS} added,")
    res = run("index", root / CLASSES[0], "--index", tmp_path / "i", "-q")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_index_skips_non_images_and_lists_them(photos, tmp_path):
    root, files = photos
    work = tmp_path / "p"
    work.mkdir()
    shutil.copy2(files[0], work / "good.jpg")
    (work / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    res = ok_json("index", work, "--index", tmp_path / "i", "--json")
    assert res["added"] == 1 and res["skipped"] == 1
    assert [resolved(s["path"]) for s in res["skipped_files"]] == [str((work / "broken.jpg").resolve())]
    text = run("index", work, "--index", tmp_path / "i2", "--show-skipped")
    assert text.returncode == 0
    listed = [ln.strip() for ln in text.stdout.splitlines() if ln.startswith("  ")]
    assert len(listed) == 1, text.stdout
    path, reason = listed[0].rsplit(": ", 1)
    assert resolved(path) == str((work / "broken.jpg").resolve())
    skip = res["skipped_files"][0]  # the line: "path: reason (detail)"
    assert reason == f"{skip['reason']} ({skip['detail']})" and skip["reason"] == "not an image"


def test_index_exclude_glob(photos, tmp_path):
    root, files = photos
    res = ok_json("index", root, "--index", tmp_path / "i", "--json", "--exclude", f"*/{CLASSES[1]}/*")
    assert res["added"] == len(files) - PER_CLASS
    from fastimg.index import Index

    with Index.open(tmp_path / "i", mode="r") as index:
        paths = [resolved(p) for p in index.paths(list(range(len(index))))]
    assert sorted(paths) == sorted(str(f) for f in files if f.parent.name != CLASSES[1])


def test_index_exclude_relative_to_the_folder_indexed(photos, tmp_path):
    """``--exclude 'CLASS/*'`` is relative to the folder given (as a user writes it); a
    bare name excludes a file anywhere; the same patterns through ``Index.add``."""
    root, files = photos
    res = ok_json("index", root, "--index", tmp_path / "i", "--json", "--exclude", f"{CLASSES[1]}/*",
                  "--exclude", files[0].name)
    expected = [f for f in files if f.parent.name != CLASSES[1] and f.name != files[0].name]
    assert res["added"] == len(expected)
    from fastimg.index import Index

    with Index.open(tmp_path / "i", mode="r") as index:
        assert sorted(resolved(e.path) for e in index) == sorted(str(f) for f in expected)
    with Index.create(tmp_path / "j", descriptor="hsv72") as index:
        report = index.add(root, exclude=f"{CLASSES[0]}/*")
        assert report.added == len([f for f in files if f.parent.name != CLASSES[0]])
    with Index.create(tmp_path / "k", descriptor="hsv72") as index:
        # relative to the folder added: inside CLASS0 itself the pattern names nothing
        report = index.add(root / CLASSES[0], exclude=f"{CLASSES[0]}/*")
        assert report.added == PER_CLASS


def test_index_location_from_environment(photos, tmp_path):
    root, files = photos
    env_idx = tmp_path / "from-env"
    res = ok_json("index", root / CLASSES[0], "--json", env={"FASTIMG_INDEX": str(env_idx)})
    assert res["index"] == str(env_idx.resolve())
    assert index_len(env_idx) == PER_CLASS
    info = ok_json("info", "--json", env={"FASTIMG_INDEX": str(env_idx)})
    assert info["count"] == PER_CLASS
    # --index wins over the environment
    other = tmp_path / "explicit"
    res = ok_json("index", root / CLASSES[1], "--index", other, "--json", env={"FASTIMG_INDEX": str(env_idx)})
    assert res["index"] == str(other.resolve())
    assert index_len(env_idx) == PER_CLASS and index_len(other) == PER_CLASS
    # -i is the short form of --index
    short = tmp_path / "short"
    res = ok_json("index", root / CLASSES[2], "-i", short, "--json", env={"FASTIMG_INDEX": str(env_idx)})
    assert res["index"] == str(short.resolve()) and index_len(short) == PER_CLASS
    assert ok_json("info", "-i", short, "--json")["count"] == PER_CLASS


def test_index_default_location(photos, tmp_path):
    """Neither --index nor FASTIMG_INDEX: $FASTIMG_DATADIR/index."""
    root, _ = photos
    res = ok_json("index", root / CLASSES[2], "--json", env={"FASTIMG_DATADIR": str(tmp_path / "data")})
    assert res["index"] == str((tmp_path / "data" / "index").resolve())
    assert index_len(tmp_path / "data" / "index") == PER_CLASS


def test_index_shows_progress_on_a_terminal(photos, tmp_path):
    import pty

    root, files = photos
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "FASTIMG_INDEX"}
    proc = subprocess.Popen([str(BIN), "index", str(root), "--index", str(tmp_path / "i")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    tty = b"".join(chunks).decode("utf-8", "replace")
    assert f"{len(files)}/{len(files)}" in tty  # tqdm's final count
    assert out.decode().startswith(f"created {(tmp_path / 'i').resolve()}: {len(files)} images")


def test_index_missing_folder_is_an_error(tmp_path):
    line = assert_one_line_error(run("index", tmp_path / "nope", "--index", tmp_path / "i"))
    assert str(tmp_path / "nope") in line
    assert not (tmp_path / "i").exists()


def test_index_empty_folder_is_an_error_and_leaves_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    line = assert_one_line_error(run("index", tmp_path / "empty", "--index", tmp_path / "i"))
    assert line.endswith("no images found")
    assert not (tmp_path / "i").exists()


def test_index_one_empty_folder_among_others_is_a_warning(photos, tmp_path):
    root, _ = photos
    (tmp_path / "empty").mkdir()
    res = run("index", root / CLASSES[0], tmp_path / "empty", "--index", tmp_path / "i", "--json")
    assert res.returncode == 0
    assert res.stderr == f"fastimg: warning: {tmp_path / 'empty'}: no images found\n"
    doc = json.loads(res.stdout)
    assert [d["added"] for d in doc["dirs"]] == [PER_CLASS, 0]
    assert index_len(tmp_path / "i") == PER_CLASS


def test_index_locked_by_another_writer(built, photos, tmp_path):
    src_idx, _ = built
    idx = tmp_path / "copy.fastimg"
    shutil.copytree(src_idx, idx)
    from fastimg.index import Index

    with Index.open(idx, mode="a"):  # this process holds the writer lock
        line = assert_one_line_error(run("index", photos[0], "--index", idx))
        assert str(os.getpid()) in line  # the message names the holder
        res = run("query", photos[1][0], "--index", idx, "--json")  # readers are not blocked
        assert res.returncode == 0, res.stderr


def test_index_descriptor_mismatch(built, photos):
    idx, _ = built
    from fastimg.features.registry import descriptors

    have = index_info(idx)["descriptor"]
    have = have["name"] if isinstance(have, dict) else have
    other = next(d["name"] for d in descriptors()
                 if d["name"] != have and d["dim"] is not None and not d["name"].startswith("cnn"))
    before = index_len(idx)
    line = assert_one_line_error(run("index", photos[0], "--index", idx, "--descriptor", other))
    assert "descriptor mismatch" in line and repr(have) in line and repr(other) in line
    assert index_len(idx) == before


def test_index_unknown_descriptor_is_a_usage_error(photos, tmp_path):
    assert_one_line_error(run("index", photos[0], "--index", tmp_path / "i", "--descriptor", "nope"), 2)
    assert not (tmp_path / "i").exists()


# --------------------------------------------------------------------------- #
# query
# --------------------------------------------------------------------------- #

def test_query_json_equals_library_search(built, photos):
    idx, _ = built
    root, files = photos
    q = files[1]
    doc = ok_json("query", q, "--index", idx, "-k", "5", "--json")
    assert set(doc) == {"query", "index", "metric", "took_ms", "results"}
    assert doc["query"] == str(q) and doc["index"] == str(idx.resolve())
    info = index_info(idx)
    want_metric = info["metric"]["name"] if isinstance(info["metric"], dict) else info["metric"]
    assert doc["metric"] == want_metric
    assert isinstance(doc["took_ms"], float) and doc["took_ms"] >= 0
    assert doc["results"] == library_hits(idx, q, 5)
    assert [r["rank"] for r in doc["results"]] == [1, 2, 3, 4, 5]
    assert str(q) not in {resolved(r["path"]) for r in doc["results"]}  # the query itself is left out


def test_query_include_self_finds_itself_first(built, photos):
    idx, _ = built
    q = photos[1][2]
    doc = ok_json("query", q, "--index", idx, "-k", "3", "--json", "--include-self")
    assert doc["results"] == library_hits(idx, q, 3, exclude_self=False)
    assert resolved(doc["results"][0]["path"]) == str(q)


@pytest.mark.parametrize("metric", ["bhattacharyya", "pearson", "chisqr"])
def test_query_metric_option(built, photos, metric):
    idx, _ = built
    q = photos[1][5]
    doc = ok_json("query", q, "--index", idx, "-k", "4", "--metric", metric.upper(), "--json")
    assert doc["metric"] == metric
    assert doc["results"] == library_hits(idx, q, 4, metric=metric)
    from fastimg.metrics import get_metric

    scores = [r["score"] for r in doc["results"]]
    assert scores == sorted(scores, reverse=get_metric(metric).higher_is_better)


def test_query_exact_mode(built, photos):
    idx, _ = built
    q = photos[1][7]
    doc = ok_json("query", q, "--index", idx, "-k", "4", "--exact", "--json")
    assert doc["results"] == library_hits(idx, q, 4, mode="exact")


def test_query_rerank(built, photos):
    idx, _ = built
    q = photos[1][6]
    for spec in ("qe", "k-reciprocal", "auto"):
        doc = ok_json("query", q, "--index", idx, "-k", "5", "--rerank", spec, "--json")
        assert doc["results"] == library_hits(idx, q, 5, rerank=spec)


def test_ann_index_info_and_query(photos, tmp_path):
    root, files = photos
    idx = tmp_path / "ann.fastimg"
    summary = ok_json("index", root, "--index", idx, "--json", "--ann")
    assert summary["ann"] is True
    info = ok_json("info", "--index", idx, "--json")
    assert info["ann"]["built"] is True and info["ann"]["metric"] == info["metric"]
    text = run("index", root, "--index", idx, "--ann").stdout  # a rebuild, summarised in words
    assert (f"HNSW graph built: {info['count']} rows, metric {info['metric']}, M={info['ann']['M']}, "
            f"ef_construction={info['ann']['ef_construction']}, search ef={info['ann']['ef']} (") in text
    assert info["ann"] == index_info(idx)["ann"]
    q = files[3]
    doc = ok_json("query", q, "--index", idx, "--ann", "--ef", "20", "-k", "5", "--json")
    assert doc["results"] == library_hits(idx, q, 5, mode="ann", ef=20)
    # scores are re-scored exactly: every reported score is the exact metric for that id
    exact = {r["id"]: r["score"] for r in library_hits(idx, q, len(files), mode="exact")}
    assert all(r["score"] == pytest.approx(exact[r["id"]], rel=1e-6) for r in doc["results"])
    line = assert_one_line_error(run("query", q, "--index", idx, "--ann", "--metric", "pearson"))
    assert "--exact" in line


def test_query_ann_without_a_graph(built, photos):
    idx, _ = built
    line = assert_one_line_error(run("query", photos[1][0], "--index", idx, "--ann"))
    assert "fastimg index DIR --ann" in line


def test_query_from_standard_input(built, photos, corel_dir):
    idx, _ = built
    outside = sorted((corel_dir / "elephants").glob("*.jpg"))[0].read_bytes()
    doc = ok_json("query", "-", "--index", idx, "-k", "4", "--json", stdin=outside)
    assert doc["query"] == "-"
    assert doc["results"] == library_hits(idx, outside, 4)
    # an indexed image piped in: the identical row is left out, as for a path
    inside = photos[1][2]
    doc = ok_json("query", "-", "--index", idx, "-k", "4", "--json", stdin=inside.read_bytes())
    assert doc["results"] == library_hits(idx, inside, 4)
    assert str(inside) not in {resolved(r["path"]) for r in doc["results"]}
    assert_one_line_error(run("query", "-", "--index", idx, stdin=b""))
    assert_one_line_error(run("query", "-", "-", "--index", idx, stdin=b"x"), code=2)


def test_query_several_images_gives_a_list(built, photos):
    idx, _ = built
    qs = [photos[1][0], photos[1][PER_CLASS], photos[1][2 * PER_CLASS]]
    docs = ok_json("query", *qs, "--index", idx, "-k", "3", "--json")
    assert isinstance(docs, list) and [d["query"] for d in docs] == [str(q) for q in qs]
    for d, q in zip(docs, qs):
        assert d["results"] == library_hits(idx, q, 3)


def test_query_text_output(built, photos):
    idx, _ = built
    q = photos[1][3]
    res = run("query", q, "--index", idx, "-k", "4")
    assert res.returncode == 0, res.stderr
    want = library_hits(idx, q, 4)
    rows = [ln.split(None, 2) for ln in res.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [w["rank"] for w in want]
    assert [r[2] for r in rows] == [w["path"] for w in want]
    assert [float(r[1]) for r in rows] == pytest.approx([w["score"] for w in want], rel=1e-5, abs=1e-6)


def test_query_text_output_several(built, photos):
    idx, _ = built
    qs = photos[1][:2]
    res = run("query", *qs, "--index", idx, "-k", "2")
    assert res.returncode == 0, res.stderr
    blocks = res.stdout.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"==> {q} <==" for q in qs]
    for b, q in zip(blocks, qs):
        assert [ln.split(None, 2)[2] for ln in b.splitlines()[1:]] == [h["path"] for h in library_hits(idx, q, 2)]


def test_query_k_is_capped_at_the_index_size(built, photos):
    idx, _ = built
    q = photos[1][0]
    n = index_len(idx)
    doc = ok_json("query", q, "--index", idx, "-k", "1000", "--json")
    assert [r["rank"] for r in doc["results"]] == list(range(1, n))  # all but the query itself
    assert doc["results"] == library_hits(idx, q, n - 1)


def test_query_outside_image(built, photos, corel_dir, tmp_path):
    """A query image that is not in the index (another class) gets k results."""
    idx, _ = built
    q = tmp_path / "outside.jpg"
    shutil.copy2(sorted((corel_dir / "flowers").glob("*.jpg"))[0], q)
    doc = ok_json("query", q, "--index", idx, "-k", "12", "--json")
    assert len(doc["results"]) == 12
    assert doc["results"] == library_hits(idx, q, 12)


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections: list[dict] = []
        self._fig: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append({"query": a.get("data-query"), "figures": []})
        elif tag == "figure":
            self._fig = {"class": a.get("class"), **{k[5:]: v for k, v in a.items() if k.startswith("data-")}}
            self.sections[-1]["figures"].append(self._fig)
        elif tag == "img" and self._fig is not None:
            self._fig["src"] = a["src"]

    def handle_endtag(self, tag):
        if tag == "figure":
            self._fig = None


def _decode_thumb(src: str):
    import base64

    import cv2

    prefix = "data:image/jpeg;base64,"
    assert src.startswith(prefix)
    img = cv2.imdecode(np.frombuffer(base64.b64decode(src[len(prefix):]), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_query_html_page(built, photos, tmp_path):
    idx, _ = built
    qs = photos[1][:2]
    page = tmp_path / "out.html"
    docs = ok_json("query", *qs, "--index", idx, "-k", "3", "--json", "--html", page)
    parser = _PageParser()
    parser.feed(page.read_text(encoding="utf-8"))
    assert [s["query"] for s in parser.sections] == [str(q) for q in qs]
    from fastimg._html import THUMB_SIDE

    for section, doc in zip(parser.sections, docs):
        figs = section["figures"]
        assert figs[0]["class"] == "q" and figs[0]["path"] == doc["query"]
        hits = [{"rank": int(f["rank"]), "id": int(f["id"]), "path": f["path"], "score": float(f["score"])}
                for f in figs[1:]]
        assert hits == doc["results"]
        for f in figs:
            thumb = _decode_thumb(f["src"])
            import cv2

            orig = cv2.imread(f["path"])
            assert max(thumb.shape[:2]) == min(THUMB_SIDE, max(orig.shape[:2]))
            # same aspect ratio (to a pixel) and similar colours as the original
            h, w = orig.shape[:2]
            assert abs(thumb.shape[0] - round(h * thumb.shape[1] / w)) <= 1
            small = cv2.resize(orig, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_AREA)
            assert np.abs(small.astype(int) - thumb.astype(int)).mean() < 8


def test_html_page_marks_unreadable_images(tmp_path):
    from fastimg._html import render_results_page

    doc = {"query": str(tmp_path / "gone.jpg"), "index": "x", "metric": "pearson", "took_ms": 1.0,
           "results": [{"rank": 1, "id": 0, "path": str(tmp_path / "gone<&>.jpg"), "score": 0.5}]}
    parser = _PageParser()
    parser.feed(render_results_page([doc]))
    figs = parser.sections[0]["figures"]
    assert [f.get("src") for f in figs] == [None, None]
    assert figs[1]["path"] == str(tmp_path / "gone<&>.jpg")  # escaped and unescaped again


# --------------------------------------------------------------------------- #
# query failure paths
# --------------------------------------------------------------------------- #

def test_query_missing_index(photos, tmp_path):
    line = assert_one_line_error(run("query", photos[1][0], "--index", tmp_path / "nope"))
    assert "fastimg index" in line


def test_query_missing_image(built, tmp_path):
    idx, _ = built
    line = assert_one_line_error(run("query", tmp_path / "nope.jpg", "--index", idx))
    assert str(tmp_path / "nope.jpg") in line


def test_query_answers_the_good_images_and_reports_the_others(built, photos, tmp_path):
    """``fastimg query good.jpg missing.jpg bad.jpg``: the good one is answered (as the
    library answers it), each other is one error line, exit status 1."""
    idx, _ = built
    good = photos[1][0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"plain text, not an image")
    missing = tmp_path / "nope.jpg"
    res = run("query", good, missing, bad, "--index", idx, "-k", "3")
    assert res.returncode == 1
    errors = res.stderr.splitlines()
    assert len(errors) == 2 and all(e.startswith("fastimg: error: ") for e in errors), res.stderr
    assert str(missing) in errors[0] and str(bad) in errors[1] and "not an image" in errors[1]
    expected = library_hits(idx, good, 3)
    lines = [ln for ln in res.stdout.splitlines() if ln and not ln.startswith("==>")]
    assert [ln.split()[-1] for ln in lines] == [h["path"] for h in expected]
    assert res.stdout.startswith(f"==> {good} <==") or res.stdout.startswith(f"==> {os.path.abspath(good)} <==")
    docs = json.loads(run("query", good, missing, "--index", idx, "-k", "3", "--json").stdout)
    assert [d["path"] for d in docs[0]["results"]] == [h["path"] for h in expected]
    assert docs[1] == {"query": str(missing), "error": f"{missing}: no such file"}


def test_query_directory_instead_of_image(built, tmp_path):
    idx, _ = built
    line = assert_one_line_error(run("query", tmp_path, "--index", idx))
    assert line.endswith("is a directory, not an image")


@pytest.mark.parametrize("content", [b"", b"GIF89a not really", b"\xff\xd8\xff\xe0" + b"\x00" * 64])
def test_query_corrupt_image(built, tmp_path, content):
    idx, _ = built
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    line = assert_one_line_error(run("query", bad, "--index", idx))
    assert str(bad) in line


def test_debug_shows_the_traceback(tmp_path, photos):
    res = run("--debug", "query", photos[1][0], "--index", tmp_path / "nope")
    assert res.returncode == 1
    assert "Traceback (most recent call last)" in res.stderr
    assert "IndexNotFoundError" in res.stderr
    # and the library's log reaches stderr (silent without --debug)
    root = photos[1][0].parent
    res = run("--debug", "index", root, "--index", tmp_path / "dbg")
    assert res.returncode == 0, res.stderr
    assert f"fastimg.index: INFO: {tmp_path / 'dbg'}: added " in res.stderr
    assert "fastimg.index: INFO" not in run("index", root, "--index", tmp_path / "quiet").stderr


# --------------------------------------------------------------------------- #
# info, remove, compact
# --------------------------------------------------------------------------- #

def test_info_json_and_text(built, photos):
    idx, _ = built
    info = ok_json("info", "--index", idx, "--json")
    lib = index_info(idx)
    assert {k: info[k] for k in lib} == lib
    assert info["count"] == len(photos[1])
    text = run("info", "--index", idx)
    assert text.returncode == 0
    kv = dict(ln.split(": ", 1) for ln in text.stdout.splitlines())
    assert kv["count"] == str(len(photos[1]))
    def flat(d, prefix=""):  # nested dicts as dotted keys, as the text output prints them
        for key, value in d.items():
            if isinstance(value, dict) and value:
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    assert set(kv) >= set(flat(lib))
    assert kv["descriptor.name"] == lib["descriptor"]["name"] and kv["metric"] == lib["metric"]

    def items(d, prefix=""):
        for key, value in d.items():
            if isinstance(value, dict) and value:
                yield from items(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    for key, value in items(lib):  # byte counts get a unit, other integers print as they are
        if isinstance(value, int) and not isinstance(value, bool):
            assert kv[key] == str(value) or ("bytes" in key and kv[key].startswith(f"{value} ")), (key, kv[key])
    from fastimg.cli.indexing import _human

    # a descriptor's input_size is pixels (it was shown as "320 B"); byte counts keep their unit
    assert _human("descriptor.params.input_size", 320) == "320"
    assert _human("size_bytes", 2_146_899) == "2146899 (2.0 MiB)"


def test_info_missing_index(tmp_path):
    assert_one_line_error(run("info", "--index", tmp_path / "nope"))


def test_remove_then_compact(built, photos, tmp_path):
    src_idx, _ = built
    idx = tmp_path / "copy.fastimg"
    shutil.copytree(src_idx, idx)
    files = photos[1]
    gone = [files[0], files[PER_CLASS]]
    res = run("remove", *gone, "--index", idx)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"removed 2 images from {idx.resolve()} ({len(files) - 2} left)\n"
    assert index_len(idx) == len(files) - 2
    q = files[1]
    doc = ok_json("query", q, "--index", idx, "-k", "100", "--json")
    assert not {resolved(r["path"]) for r in doc["results"]} & {str(g) for g in gone}
    assert len(doc["results"]) == len(files) - 3
    res = run("compact", "--index", idx)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"compacted {idx.resolve()}: {len(files) - 2} images")
    after = ok_json("query", q, "--index", idx, "-k", "100", "--json")
    assert after["results"] == library_hits(idx, q, len(files) - 3)
    assert [(r["path"], r["score"]) for r in after["results"]] == [(r["path"], r["score"]) for r in doc["results"]]


def test_remove_unknown_path_is_an_error(built, tmp_path):
    src_idx, _ = built
    idx = tmp_path / "copy.fastimg"
    shutil.copytree(src_idx, idx)
    line = assert_one_line_error(run("remove", tmp_path / "never-indexed.jpg", "--index", idx))
    assert "not in the index" in line
    assert index_len(idx) == index_len(src_idx)


# --------------------------------------------------------------------------- #
# dedup
# --------------------------------------------------------------------------- #

@pytest.fixture(scope="session")
def dup_index(corel_dir, tmp_path_factory):
    """8 photos plus an exact copy of one and a half-size re-encode of another."""
    import cv2

    root = tmp_path_factory.mktemp("dups")
    files = copy_images(corel_dir, root, classes=("beaches", "bus"), per_class=4)
    shutil.copy2(files[0], root / "copy_of_first.jpg")
    img = cv2.imread(str(files[5]))
    cv2.imwrite(str(root / "small_sixth.jpg"), cv2.resize(img, None, fx=0.5, fy=0.5,
                                                          interpolation=cv2.INTER_AREA),
                [cv2.IMWRITE_JPEG_QUALITY, 90])
    idx = tmp_path_factory.mktemp("dupidx") / "i"
    ok_json("index", root, "--index", idx, "--json")
    return idx, root, files


def _oracle_groups(idx: Path, metric: str, threshold: float):
    """Brute force over every ordered pair with the float64 reference scores."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from fastimg.index import Index
    from fastimg.metrics import exact_scores, get_metric

    higher = get_metric(metric).higher_is_better
    with Index.open(idx, mode="r") as index:
        vecs = np.asarray(index.vectors, dtype=np.float32)
        n = len(vecs)
        paths = {i: p for i, p in zip(index.live_ids().tolist(), index.paths(index.live_ids().tolist()))}
    live = [i for i in range(n) if i not in set(index_deleted(idx))]
    pairs = {}
    for i in live:
        s = exact_scores(metric, vecs[i], vecs)
        # float32 search scores vs this float64 reference: no pair may sit on the threshold
        assert not np.any(np.abs(s[live] - threshold) < 1e-5 * max(1.0, abs(threshold))), "borderline pair"
        for j in np.flatnonzero(s >= threshold if higher else s <= threshold):
            if j != i and j in live:
                pairs.setdefault((min(i, j), max(i, j)), []).append(float(s[j]))
    a = np.array([p[0] for p in pairs] or [0], dtype=int)
    b = np.array([p[1] for p in pairs] or [0], dtype=int)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups = {}
    for i in live:
        groups.setdefault(labels[i], set()).add(paths[i])
    return pairs, [g for g in groups.values() if len(g) > 1]


def _check_dedup(doc, idx, metric, threshold):
    pairs, groups = _oracle_groups(idx, metric, threshold)
    got_pairs = {(p["a"], p["b"]): p["score"] for p in doc["pairs"]}
    assert set(got_pairs) == set(pairs)
    for key, score in got_pairs.items():
        assert any(score == pytest.approx(s, rel=1e-5, abs=1e-6) for s in pairs[key])
    got_groups = [{g["path"] for g in group} for group in doc["groups"]]
    assert sorted(map(sorted, got_groups)) == sorted(map(sorted, groups))
    assert [len(g) for g in got_groups] == sorted((len(g) for g in got_groups), reverse=True)


def test_dedup_default_threshold_finds_the_copies(dup_index):
    idx, root, files = dup_index
    doc = ok_json("dedup", "--index", idx, "--json", "--verify", "none")
    metric = doc["metric"]
    assert doc["threshold"] == THRESHOLDS[("hsv72", metric)]  # the index's descriptor, calibrated
    _check_dedup(doc, idx, metric, doc["threshold"])
    groups = [{resolved(g["path"]) for g in group} for group in doc["groups"]]
    assert {str(files[0]), str((root / "copy_of_first.jpg").resolve())} in [
        g & {str(files[0]), str((root / "copy_of_first.jpg").resolve())} for g in groups]
    assert any({str(files[5]), str((root / "small_sixth.jpg").resolve())} <= g for g in groups)


@pytest.mark.parametrize("metric,threshold", [("pearson", 0.6), ("bhattacharyya", 0.45), ("l2", 0.05)])
def test_dedup_matches_brute_force(dup_index, metric, threshold):
    idx, _, _ = dup_index
    doc = ok_json("dedup", "--index", idx, "--json", "--metric", metric, "--threshold", str(threshold),
                  "--batch", "3")
    assert (doc["metric"], doc["threshold"]) == (metric, threshold)
    _check_dedup(doc, idx, metric, threshold)


def test_dedup_large_groups_are_complete(dup_index):
    """A threshold that links everything: every row's neighbour list must be extended."""
    idx, _, _ = dup_index
    doc = ok_json("dedup", "--index", idx, "--json", "--metric", "pearson", "--threshold", "-1.5")
    n = index_len(idx)
    assert len(doc["pairs"]) == n * (n - 1) // 2
    assert [len(g) for g in doc["groups"]] == [n]


def test_dedup_ignores_removed_images(dup_index, tmp_path):
    src, root, files = dup_index
    idx = tmp_path / "copy"
    shutil.copytree(src, idx)
    assert run("remove", root / "copy_of_first.jpg", "--index", idx).returncode == 0
    doc = ok_json("dedup", "--index", idx, "--json", "--verify", "none")
    assert index_deleted(idx)  # the row is still in the vector file, marked deleted
    _check_dedup(doc, idx, doc["metric"], doc["threshold"])
    listed = {resolved(g["path"]) for group in doc["groups"] for g in group}
    assert str((root / "copy_of_first.jpg").resolve()) not in listed


def test_dedup_text_output(dup_index):
    idx, _, _ = dup_index
    doc = ok_json("dedup", "--index", idx, "--json")
    res = run("dedup", "--index", idx)
    assert res.returncode == 0
    blocks = res.stdout.split("\n\n")
    assert len(blocks) == len(doc["groups"])
    for block, group in zip(blocks, doc["groups"]):
        lines = block.splitlines()
        assert lines[0].startswith(f"group {doc['groups'].index(group) + 1} ({len(group)} images")
        assert [ln.strip() for ln in lines[1:]] == [g["path"] for g in group]


@pytest.mark.parametrize("metric", ["l1", "intersect"])
def test_dedup_default_is_for_the_calibrated_metric_only(dup_index, metric):
    """hsv72's default is calibrated for bhattacharyya; another metric's scale differs: the
    error says so (and which metric has one); with --threshold it works."""
    idx, root, files = dup_index
    line = assert_one_line_error(run("dedup", "--index", idx, "--metric", metric, "--verify", "none"), code=2)
    assert f"descriptor 'hsv72' has no calibrated default for metric '{metric}' (only for 'bhattacharyya')" in line
    assert "--threshold" in line
    threshold = {"l1": 0.05, "intersect": 0.975}[metric]
    doc = ok_json("dedup", "--index", idx, "--json", "--metric", metric, "--threshold", str(threshold))
    _check_dedup(doc, idx, metric, threshold)
    pair = {str(files[0]), str((root / "copy_of_first.jpg").resolve())}
    assert any(pair <= {resolved(g["path"]) for g in group} for group in doc["groups"])


def test_dedup_default_verifies_the_copies(dup_index):
    """The default (--verify orb) groups the exact copy and the half-size re-encode with
    their originals, and nothing across the two classes; every pair's inlier count is at
    least --min-inliers and its score is the metric's (NumPy/OpenCV reference)."""
    from fastimg.dedup import VERIFY_MIN_INLIERS
    from fastimg.metrics import exact_scores

    idx, root, files = dup_index
    doc = ok_json("dedup", "--index", idx, "--json", "--workers", "1")
    assert doc["verify"] == "orb" and doc["threshold"] is None
    groups = [{resolved(g["path"]) for g in group} for group in doc["groups"]]
    assert any({str(files[0]), str((root / "copy_of_first.jpg").resolve())} <= g for g in groups)
    assert any({str(files[5]), str((root / "small_sixth.jpg").resolve())} <= g for g in groups)
    cls = {str(f): ("beaches" if i < 4 else "bus") for i, f in enumerate(files)}
    cls[str((root / "copy_of_first.jpg").resolve())] = cls[str(files[0])]
    cls[str((root / "small_sixth.jpg").resolve())] = cls[str(files[5])]
    assert all(len({cls.get(p, p) for p in g}) == 1 for g in groups)
    from fastimg.index import Index

    with Index.open(idx, mode="r") as index:
        vecs = np.asarray(index.vectors, dtype=np.float32)
    for p in doc["pairs"]:
        assert p["inliers"] >= VERIFY_MIN_INLIERS
        assert p["score"] == pytest.approx(exact_scores(doc["metric"], vecs[p["a"]], vecs[p["b"]:p["b"] + 1])[0],
                                           rel=1e-5, abs=1e-6)
    stricter = ok_json("dedup", "--index", idx, "--json", "--min-inliers", "100000")
    assert stricter["groups"] == [] and stricter["pairs"] == []


def test_dedup_needs_a_threshold_for_metrics_without_default(dup_index):
    idx, _, _ = dup_index
    line = assert_one_line_error(run("dedup", "--index", idx, "--metric", "chisqr", "--verify", "none"), code=2)
    assert "--threshold" in line


# --------------------------------------------------------------------------- #
# descriptors, eval
# --------------------------------------------------------------------------- #

def test_descriptors_listing():
    from fastimg.features.registry import descriptors

    want = json.loads(json.dumps(descriptors(), default=json_default))
    assert ok_json("descriptors", "--json") == want
    res = run("descriptors")
    assert res.returncode == 0
    rows = [ln.split(None, 3) for ln in res.stdout.splitlines()]
    assert rows[0][:3] == ["name", "dim", "metric"]
    def cell(v):
        return "-" if v is None else str(v)

    assert [tuple(r[:3]) for r in rows[1:]] == [(d["name"], cell(d["dim"]), cell(d["default_metric"]))
                                                for d in want]
    assert len(rows) > 1


def test_eval_command_is_wired(tmp_path):
    """``fastimg eval --help`` is the full parser (fastimg.cli.evaluating), with the layouts of fastimg.eval."""
    import re

    from fastimg.eval import LAYOUTS

    res = run("eval", "--help")
    assert res.returncode == 0, res.stderr
    options = [ln for ln in res.stdout.splitlines() if re.match(r"\s+--layout\b", ln)]
    assert options and "{" + ",".join(LAYOUTS) + "}" in options[0], res.stdout
    res = run("eval", tmp_path, "--depth", "0")
    assert_one_line_error(res, code=2)


def test_eval_header_says_how_many_images_were_left_out(photos, tmp_path):
    """An unreadable file in a class folder: the table's header says it was left out,
    and the measured queries are the readable images only."""
    root, files = photos
    ds = tmp_path / "ds"
    for f in files:
        (ds / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, ds / f.parent.name / f.name)
    (ds / files[0].parent.name / "zz_broken.jpg").write_bytes(b"not an image")
    res = run("eval", ds)
    assert res.returncode == 0, res.stderr
    header = res.stdout.splitlines()[:2]
    assert header[1] == f"hsv72: 1 of {len(files) + 1} images could not be read and were left out " \
                        f"({len(files)} queries measured)"
    doc = ok_json("eval", ds, "--json")
    assert doc["results"][0]["n_failed"] == 1 and doc["results"][0]["n_queries"] == len(files)


def test_eval_unavailable_says_so(monkeypatch, capsys):
    import types

    monkeypatch.setitem(sys.modules, "fastimg.eval", types.ModuleType("fastimg.eval"))
    rc = cli.main(["eval", "somewhere"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("fastimg: error: `fastimg eval` is unavailable: ") and err.count("\n") == 1


def test_wants_eval():
    from fastimg.cli.evaluating import wants_eval

    assert wants_eval(["eval", "x"]) and wants_eval(["--debug", "eval"])
    assert not wants_eval(["query", "eval"]) and not wants_eval(["--help"]) and not wants_eval(["--", "eval"])


def test_query_and_dedup_do_not_walk_the_index(dup_index, monkeypatch, capsys):
    """``Index.info()`` walks the whole index directory: a plain query and a dedup with the
    index's own metric (bhattacharyya, hsv72's calibrated default) read index.metric and descriptor_spec instead."""
    from fastimg.index import Index

    idx, root, files = dup_index

    def no_info(self):
        raise AssertionError("info() called")

    monkeypatch.setattr(Index, "info", no_info)
    assert cli.main(["query", str(files[0]), "--index", str(idx), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["metric"] == "bhattacharyya" and len(doc["results"]) == 9
    assert cli.main(["dedup", "--index", str(idx), "--json", "--verify", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["threshold"] == THRESHOLDS[("hsv72", "bhattacharyya")]
    assert cli.main(["dedup", "--index", str(idx), "--json"]) == 0  # verify="orb"
    assert json.loads(capsys.readouterr().out)["verify"] == "orb"
