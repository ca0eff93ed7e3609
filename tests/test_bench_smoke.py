"""Every recipes/bench script, run tiny, so none of them can rot: the flags the scripts have (or --tiny /
--grid where the real sizes take minutes), the real main() and its own checks (encoder vs transformers,
KV cache vs recompute, ours vs the PIL baseline), then a look at what each printed or wrote.

The scripts that change the whole process (mfu.py and loader.py keep freed memory for reuse and set the
torch thread count) run in one subprocess, one after the other (Composer is imported once); the others run
in this process. memory.py starts a fresh process per configuration itself: 20 s on idle cores, 40 s
under load, so it is marked slow. The whole file: 40-70 s on 2 cores (idle - loaded)."""
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanoocr.model.precision import cpu_bf16_hardware

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "recipes" / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "common")
needs_poppler = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils not installed")


def test_every_bench_script_has_a_smoke_test():
    tests = [name for name in globals() if name.startswith("test_")]
    untested = [s for s in SCRIPTS if not any(t == f"test_{s}" or t.startswith(f"test_{s}_") for t in tests)]
    assert not untested, f"bench scripts without a smoke test here: {untested}"


@pytest.fixture
def bench(monkeypatch):
    """bench(name) -> the script as a module (its `from common import ...` resolved like `python script.py`)."""
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()

    def run(name, *args):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main([str(a) for a in args])

    yield run
    torch.set_num_threads(threads)  # preprocess.py runs with one thread, like a loader worker


# Runs each (script, args) of argv[2] (JSON) in turn in this process; "=== NAME" starts a script's output.
DRIVER = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
for name, args in json.loads(sys.argv[2]):
    print(f"=== {name}", flush=True)
    assert importlib.import_module(name).main(args) == 0, name
"""


@pytest.fixture(scope="module")
def isolated(pdfs):
    """{script: stdout} of mfu.py and loader.py, run tiny in one fresh process."""
    runs = [["mfu", ["--presets", "nano", "--batch", "1", "--steps", "1", "--mode", "tiny"]]]
    if shutil.which("pdftoppm"):
        runs.append(["loader", ["--pdfs", str(pdfs), "--pages", "2", "--modes", "tiny", "--workers", "0",
                                "--batch-size", "1", "--warmup-batches", "1", "--samples", "2", "--model-steps", "1"]])
    out = subprocess.run([sys.executable, "-c", DRIVER, str(BENCH), json.dumps(runs)], cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    parts = re.split(r"^=== (\w+)\n", out.stdout, flags=re.M)[1:]
    return dict(zip(parts[::2], parts[1::2]))


def table_rows(text: str, first: str) -> list[list[str]]:
    """The cells of the Markdown table rows that start with `first`."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first}")]


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory):
    """A folder with one 2-page text PDF (the page maker of tests/test_pages.py)."""
    from test_pages import make_pdf

    folder = tmp_path_factory.mktemp("pdfs")
    make_pdf(folder / "a.pdf", ["text", "text"])
    return folder


def test_attention(bench, capsys):
    assert bench("attention", "--batch", 1, "--heads", 1, "--head-dim", 16, "--grid", 16, "--runs", 1) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "global 16x16") + table_rows(out, "windows 14x14")
    assert len(rows) == 2, rows
    for row in rows:
        assert float(row[-1]) < 1e-4, f"blockwise vs SDPA differ: {row}"


def test_attention_bf16(bench, capsys):
    """--dtype bf16: each path's error against float64 SDPA, ours first, SDPA's in parentheses."""
    assert bench("attention", "--batch", 1, "--heads", 1, "--head-dim", 16, "--grid", 16, "--runs", 1,
                 "--dtype", "bf16") == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "global 16x16") + table_rows(out, "windows 14x14")
    assert len(rows) == 2, rows
    for row in rows:
        ours, sdpa = re.fullmatch(r"(\S+) \(SDPA: (\S+)\)", row[-1]).groups()
        assert 0 < float(ours) < 0.05 and 0 < float(sdpa) < 0.05, row


def test_encoder(bench, capsys):
    assert bench("encoder", "--tiny", "--runs", 1, "--warmup", 1) == 0
    out = capsys.readouterr().out
    # the script asserts max rel error < 1e-4 against transformers before it prints these
    assert "SAM+compressor output matches transformers" in out and "CLIP output matches transformers" in out
    assert len(table_rows(out, "nanoocr")) == len(table_rows(out, "transformers")) == 1


def test_generation(bench, capsys):
    assert bench("generation", "--mode", "tiny", "--new-tokens", 4, "--text-tokens", 4) == 0
    out = capsys.readouterr().out
    assert "same tokens: yes" in out, out
    assert len(table_rows(out, "KV cache")) == 1


@needs_poppler
def test_preprocess(bench, pdfs, tmp_path):
    report = tmp_path / "preprocess.json"
    assert bench("preprocess", "--pdfs", pdfs, "--pages", 2, "--modes", "tiny", "gundam", "--json", report) == 0
    rows = {r["mode"]: r for r in json.loads(report.read_text())["rows"]}
    assert rows.keys() == {"tiny", "gundam"}
    for r in rows.values():
        assert r["pages_timed"] == 1 and r["ours_ms"] > 0 and r["baseline_ms"] > 0
        assert r["max_abs_diff"] == r["max_abs_diff_uint8"] == 0, r  # pixel-exact with the PIL pipeline
    assert "(3, 512, 512)" in rows["tiny"]["shapes"][0]
    assert ", 3, 640, 640)" in rows["gundam"]["shapes"][0], rows["gundam"]["shapes"]  # a US-letter page has crops


@pytest.mark.slow
def test_memory(bench, tmp_path, capsys):
    report = tmp_path / "memory.json"
    assert bench("memory", "--preset", "nano", "--batch", 1, "--modes", "tiny", "--steps", 1,
                 "--generator", "text_page", "--json", report) == 0
    rows = {r["activation_checkpointing"]: r for r in json.loads(report.read_text())["rows"]}
    assert rows.keys() == {False, True}
    for r in rows.values():
        assert r["peak_rss_mib"] > r["baseline_rss_mib"] > 0 and r["s_per_step"] > 0
    # a checkpointed block keeps only its input for backward
    assert rows[True]["saved_for_backward_mib"] < rows[False]["saved_for_backward_mib"], rows
    assert len(table_rows(capsys.readouterr().out, "tiny")) == 2


def test_mfu(isolated):
    out = isolated["mfu"]
    if not cpu_bf16_hardware()[0]:  # bf16 emulated: the default is fp32 alone (what cpu_autocast: auto runs)
        assert "measured bf16" not in out, out
        (fp32,) = table_rows(out, "nano")
        assert re.search(r"measured fp32 matmul peak: [\d.]+ GFLOP/s", out) and fp32[1] == "fp32", out
        assert 0 < float(fp32[-1].rstrip("%")) < 100, fp32
        return
    for precision in ("fp32", "bf16"):  # both by default, each MFU against its own peak
        assert re.search(rf"measured {precision} matmul peak: [\d.]+ GFLOP/s", out), out
    fp32, bf16, ratio = table_rows(out, "nano")
    assert (fp32[1], bf16[1]) == ("fp32", "bf16"), out
    for row in (fp32, bf16):
        assert 0 < float(row[-1].rstrip("%")) < 100, row
    assert float(ratio[1].rstrip("x")) == pytest.approx(float(bf16[4]) / float(fp32[4]), rel=0.1), out  # samples/s


@needs_poppler
def test_loader(isolated):
    (row,) = table_rows(isolated["loader"], "tiny")
    assert row[1] == "2" and float(row[3]) > 0 and float(row[-2]) > 0, row  # samples timed, samples/s, model's


def test_logits(bench, capsys):
    assert bench("logits", "--seq", 1024, "--vocab", 16411, "--steps", 1) == 0  # chunks of 255 rows
    out = capsys.readouterr().out
    (plain,), (chunked,) = table_rows(out, "plain"), table_rows(out, "chunked")
    assert float(chunked[1]) < float(plain[1]) / 4, (plain, chunked)  # head peak MiB


@pytest.mark.slow  # torch.compile of the nano model: minutes on 2 cores
def test_compile(bench, capsys):
    assert bench("compile", "--batch", 1, "--steps", 1, "--mode", "tiny", "--seq", 160, "--precisions", "fp32") == 0
    out = capsys.readouterr().out
    (row,) = table_rows(out, "fp32")
    assert float(row[-1]) > 0  # compiled ÷ eager; the script checked that the first losses agree


def test_tier1_seeds(bench, tmp_path, capsys):
    """Two shrunk Tier-1 runs side by side (1 thread each, 2 batches): the table has a row per seed with the
    outcome columns read from each run's own log and metrics."""
    from nanoocr.data.convert import main as convert
    data = tmp_path / "overfit10"
    assert convert(["--input", "synthetic:overfit10:10:0", "--out", str(data)]) in (0, None)
    out = tmp_path / "seeds"
    assert bench("tier1_seeds", "--seeds", 1, 2, "--threads", 1, "--jobs", 2, "--out", out, "--override",
                 "max_duration=2ba", f"variables.data_dir={data}", "callbacks.vision_collapse.interval=1",
                 "final_eval.max_new_tokens=2") == 0
    rows = json.loads((out / "rows.json").read_text())
    assert [(r["seed"], r["threads"], r["rc"]) for r in rows] == [(1, 1, 0), (2, 1, 0)]
    for r in rows:
        assert re.fullmatch(r"\d+/10", r["exact_match"]) and r["final_loss"] > 0.01  # 2 batches: not learned
        assert r["first_batch_below_0.01"] is None and 0 < r["cosine_start"] <= 1 and r["seconds"] > 0
    assert (out / "table.md").read_text().count("\n") == 4  # header, rule, two rows


def test_vision_share(bench, tmp_path, capsys):
    """A tiny export and a fresh nano on 3 probes: one row each, the shares in [0, 1], the cosines in [-1, 1]."""
    from nanoocr.data.convert import main as convert
    from nanoocr.data.tokenizer import Tokenizer
    from nanoocr.model import presets
    from nanoocr.model.vlm import NanoOCR
    from nanoocr.train.export import export_model
    assert convert(["--input", "synthetic:overfit10:10:0", "--out", str(tmp_path / "mds")]) in (0, None)
    tok = Tokenizer.train_from_iterator(["Free OCR. the quick brown fox"] * 4, vocab_size=300)
    model = NanoOCR(presets.build_config("nano", gpt={"vocab_size": tok.vocab_size, "sequence_len": 256},
                                         image_token_id=tok.image_id))
    export_model(model, tok, tmp_path / "export", mode="tiny")
    assert bench("vision_share", tmp_path / "export", "--data", tmp_path / "mds", "--probes", 3, "--init", "nano") == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "fresh nano") + table_rows(out, str(tmp_path / "export"))
    assert len(rows) == 2, out
    for row in rows:
        c73, cgrid, norm, part, share = map(float, row[1:6])
        assert -1 <= c73 <= 1 and -1 <= cgrid <= 1 and norm > part > 0 and 0 < share <= 1, row


@pytest.mark.parametrize("source", ["sam", "tokens"])
def test_glyph_probe(bench, capsys, source):
    """Two training steps of the encoder-only CTC probe: a table row per evaluation, CER and losses finite."""
    assert bench("glyph_probe", "--source", source, "--train", 4, "--val", 2, "--steps", 2, "--every", 1,
                 "--batch", 2) == 0
    rows = [r for r in table_rows(capsys.readouterr().out, "") if r[0].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2], rows
    for row in rows:
        val, score = float(row[3]), float(row[4])
        assert math.isfinite(val) and val > 0 and score >= 0, row


def test_glyph_probe_saves_an_encoder_the_recipe_loads(bench, tmp_path):
    """--save writes the trained encoder under the released names: model.pretrained.deepseek's loader puts every
    tensor back (strict: nothing missing or left over), equal to what the probe wrote, and the probe did train it
    (its SAM differs from a fresh one of the same seed)."""
    from safetensors.torch import load_file
    from nanoocr.model.presets import build_config
    from nanoocr.model.pretrained import load_deepseek_vision
    from nanoocr.model.vlm import NanoOCR

    out = tmp_path / "vision.safetensors"
    assert bench("glyph_probe", "--train", 4, "--val", 2, "--steps", 2, "--every", 2, "--batch", 2,
                 "--sam-global", "--save", out) == 0
    torch.manual_seed(0)
    model = NanoOCR(build_config("nano", sam={"global_attn_indexes": ()}))
    key = "model.sam_model.blocks.0.attn.qkv.weight"
    saved = load_file(out)
    assert not torch.equal(model.sam.blocks[0].attn.qkv.weight, saved[key])
    report = load_deepseek_vision(model, out)
    assert report.loaded == len(saved) and not report.missing and not report.unexpected
    assert torch.equal(model.sam.blocks[0].attn.qkv.weight, saved[key])
    # --init starts from such a file: with no steps, what it saves again is that file, tensor for tensor
    again = tmp_path / "again.safetensors"
    assert bench("glyph_probe", "--train", 2, "--val", 2, "--steps", 0, "--sam-global", "--seed", 5,
                 "--init", out, "--save", again) == 0
    resaved = load_file(again)
    assert resaved.keys() == saved.keys()
    assert all(torch.equal(resaved[k], saved[k]) for k in saved)


def test_decoder_probe(bench, capsys):
    """Two steps of the decoder-only probe, one on the text grid and one on the oracle vectors: a table row per
    evaluation with its phase, finite loss, a CER."""
    assert bench("decoder_probe", "--steps", 2, "--text-steps", 1, "--chars-per-token", 1, "--every", 1,
                 "--val", 2, "--batch", 2, "--n-layer", 1, "--n-embd", 64) == 0
    rows = [r for r in table_rows(capsys.readouterr().out, "") if r[0].isdigit()]
    assert [(int(r[0]), r[2]) for r in rows] == [(0, "text"), (1, "vision"), (2, "vision")], rows
    assert all(math.isfinite(float(r[3])) for r in rows[1:]) and all(float(r[4]) >= 0 for r in rows), rows


def test_decoder_probe_oracle_holds_the_line(monkeypatch):
    """What the probe's GPT is asked to read is there: the line comes back from each sample's grid by the math
    written out here (each character's cell, minus the cell's position vector, projected on slot * char), the text
    phase's grid ids spell it in row-major order, and the targets are the answer's ids and the end token."""
    monkeypatch.syspath_prepend(str(BENCH))
    import random
    import decoder_probe as dp

    for k in (1, 3):
        oracle = dp.Oracle(dim=512, max_k=k, seed=3)
        grids, ids, text_ids, targets, texts = oracle.batch(random.Random(k), 8)
        bound = oracle.slot[:, None, :] * oracle.char[None, :, :]  # (k, chars, dim)
        for b, text in enumerate(texts):
            content = grids[b] * 512 ** 0.5 - oracle.pos  # (8, 8, dim): only the line's cells are non-zero
            cells = [(r, c) for r in range(8) for c in range(8) if content[r, c].abs().max() > 1e-4]
            read = ""
            for r, c in cells:
                scores = torch.einsum("d,kcd->kc", content[r, c], bound) / bound.pow(2).sum(-1)  # ~1 where bound
                slots = [j for j in range(k) if scores[j].max() > 0.5]
                read += "".join(dp.CHARS[int(scores[j].argmax())] for j in slots)
            assert read == text, (k, read, text)
            answer = [dp.CHARS.index(ch) + 1 for ch in text] + [dp.EOS]
            assert targets[b][targets[b] >= 0].tolist() == answer
            assert ids[b, :dp.N_VISION].eq(dp.IMAGE).all() and ids[b, dp.N_VISION] == dp.SEP
            if k == 1:
                cells_ids = [t for t in text_ids[b, :dp.N_VISION].tolist() if 1 <= t <= len(dp.CHARS)]
                assert "".join(dp.CHARS[t - 1] for t in cells_ids) == text
    # --place: a line starts in the first cell (corner) or a row's first cell (row); spaces are cells too
    for place in ("corner", "row"):
        oracle = dp.Oracle(dim=64, max_k=1, seed=3, place=place)
        grids, ids, text_ids, targets, texts = oracle.batch(random.Random(5), 16)
        rows = set()
        for b, text in enumerate(texts):
            first = next(i for i, t in enumerate(text_ids[b, :dp.N_VISION].tolist()) if 1 <= t <= len(dp.CHARS))
            row, col = divmod(first, dp.GRID + 1)
            assert col == 0 and (place == "row" or row == 0), (place, row, col)
            rows.add(row)
        assert place == "corner" or len(rows) > 1
    # --min-chars-per-token 2 --chars-per-token 2: every token holds two characters (the last one may hold one)
    oracle = dp.Oracle(dim=64, max_k=2, seed=3, min_k=2)
    grids, _, _, _, texts = oracle.batch(random.Random(6), 16)
    for b, text in enumerate(texts):
        filled = int(((grids[b] * 64 ** 0.5 - oracle.pos).abs().amax(-1) > 1e-4).sum())
        assert filled == -(-len(text) // 2), (text, filled)


def test_read_probe(bench, capsys):
    """Two copy steps and two reading steps of the whole model: rows of both phases, CERs of the reading rows."""
    assert bench("read_probe", "--copy-steps", 2, "--steps", 2, "--every", 2, "--val", 2, "--unseen", 6,
                 "--batch", 2) == 0
    rows = [r for r in table_rows(capsys.readouterr().out, "") if r[0].isdigit()]
    assert [(int(r[0]), r[2]) for r in rows] == [(0, "copy"), (2, "read"), (4, "read")], rows
    # columns: step, seconds, phase, GPT loss, CTC loss (nan: no head), CER nonce / unseen words / unseen fonts
    assert all(math.isfinite(float(r[3])) and math.isnan(float(r[4])) for r in rows[1:]), rows
    assert all(float(r[k]) >= 0 for r in rows[1:] for k in (5, 6, 7)), rows


@pytest.mark.parametrize("flag, train_gen", [("--crop", "reading_crop_nonce_words"), ("--big", "reading_big_nonce"),
                                             ("--cells", "reading_cells_nonce")])
def test_read_probe_with_ctc(bench, capsys, flag, train_gen):
    """The probe on text-line crops, big words and letters in cells, with the CTC head on the token columns: reading
    rows with finite GPT and CTC losses and CERs on the three held-out sets."""
    assert bench("read_probe", flag, "--ctc", 1.0, "--copy-steps", 0, "--steps", 2, "--every", 2, "--val", 2,
                 "--unseen", 6, "--batch", 2) == 0
    out = capsys.readouterr().out
    assert f"character vocabulary, {train_gen}, CTC head on the token columns (weight 1.0)" in out
    rows = [r for r in table_rows(out, "") if r[0].isdigit()]
    assert [(int(r[0]), r[2]) for r in rows] == [(0, "read"), (2, "read")], rows
    assert math.isfinite(float(rows[1][3])) and math.isfinite(float(rows[1][4])) and float(rows[1][4]) > 0, rows
    assert all(float(r[k]) >= 0 for r in rows for k in (5, 6, 7)), rows


def test_read_probe_copy_rows_hold_the_line(monkeypatch):
    """The copy phase's rows: a 64-character line of letter strings, the prompt's end, the same line, the end token;
    the targets are exactly the second copy and the end token, placed one position early (next-token targets)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import random
    import read_probe as rp

    ids, targets = rp.copy_batch(random.Random(4), 8)
    for row, tgt in zip(ids.tolist(), targets.tolist()):
        n = row.index(rp.SEP)
        line = rp.decode(row[:n])
        assert len(line) in (63, 64) and set(line) <= set("abcdefghijklmnopqrstuvwxyz ") and line == line.strip()
        assert row[n + 1:2 * n + 2] == rp.encode(line) + [rp.EOS]
        assert [t for t in tgt if t >= 0] == rp.encode(line) + [rp.EOS]
        assert tgt[n - 1] == -1 and tgt[n] == row[n + 1]  # the first target is predicted at the SEP position
