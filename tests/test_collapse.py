"""Vision-feature collapse: the similarity the monitor reports, its warn/stop switch, the staged unfreeze
algorithm, and (slow) the regression guard: Tier-1's configured lrs keep the encoder's features apart
while a uniform lr on the encoder (the known failure) collapses them.
"""
import itertools
import json
from pathlib import Path

import pytest
import torch

from nanoocr.train.build import build_trainer
from nanoocr.train.callbacks import RunStopped, feature_similarity
from nanoocr.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def reference_similarity(feats: torch.Tensor) -> float:
    """The definition written out: flatten each image's (tokens, C) features after subtracting the mean
    feature vector over every token of every image, then average cos(a, b) over ordered pairs a != b."""
    n, t, c = feats.shape
    mean = sum(feats[i, j] for i in range(n) for j in range(t)) / (n * t)
    vecs = [torch.cat([feats[i, j] - mean for j in range(t)]) for i in range(n)]
    pairs = [(a, b) for a, b in itertools.product(range(n), repeat=2) if a != b]
    return sum(float(torch.dot(vecs[a], vecs[b]) / (vecs[a].norm() * vecs[b].norm())) for a, b in pairs) / len(pairs)


def test_similarity_matches_the_definition_written_out():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 7, 3, generator=g, dtype=torch.float64) + torch.tensor([4.0, -2.0, 1.0], dtype=torch.float64)
    assert feature_similarity(feats) == pytest.approx(reference_similarity(feats), abs=1e-6)


def test_similarity_is_one_when_features_ignore_the_image():
    g = torch.Generator().manual_seed(1)
    per_position = torch.randn(1, 6, 4, generator=g).expand(3, 6, 4)  # depends on position only
    assert feature_similarity(per_position) == pytest.approx(1.0, abs=1e-6)
    constant = torch.full((3, 6, 4), 2.5)  # one vector everywhere: nothing left after centering
    assert feature_similarity(constant) == 1.0


def test_a_shared_bias_does_not_hide_different_images():
    # Two images whose token features differ only where the text is, on top of a large shared bias: the
    # raw pooled cosine is ~1, the monitor's similarity is not.
    base = torch.zeros(2, 4, 3)
    base[0, 0] = torch.tensor([1.0, 0, 0])
    base[1, 3] = torch.tensor([0, 1.0, 0])
    feats = base + 10.0
    pooled = torch.nn.functional.cosine_similarity(feats[0].mean(0), feats[1].mean(0), dim=0)
    assert pooled > 0.999
    assert feature_similarity(feats) == pytest.approx(reference_similarity(feats), abs=1e-6)
    assert feature_similarity(feats) < 0.5


@pytest.fixture(scope="module")
def overfit10(tmp_path_factory):
    from nanoocr.data.convert import main as convert
    out = tmp_path_factory.mktemp("data") / "overfit10"
    assert convert(["--input", "synthetic:overfit10:10:0", "--out", str(out)]) in (0, None)
    return out


def tier1(data: Path, run: Path, *extra: str) -> dict:
    return load_config(str(ROOT / "yamls/tier1_overfit.yaml"), [
        f"variables.data_dir={data}", f"run_folder={run}", "progress_bar=false", "final_eval=null",
        "loggers={jsonl: {}}", *extra])


def cosines(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["vision/mean_cosine"] for r in rows if "vision/mean_cosine" in r]


def test_monitor_stops_the_run_when_told(overfit10, tmp_path):
    cfg = tier1(overfit10, tmp_path / "stop", "max_duration=2ba",
                "callbacks={vision_collapse: {interval: 1, probes: 3, stop_above: -1.0}}")
    trainer, _, _ = build_trainer(cfg)
    with pytest.raises(RunStopped, match=r"vision/mean_cosine is .* at batch 0, above callbacks.vision_collapse.stop_above"):
        trainer.fit()
    assert (tmp_path / "stop" / "vision_cosine.csv").read_text().startswith("batch,mean_cosine\n0,")


def test_unfreeze_holds_the_parts_until_the_batch_then_trains_them(overfit10, tmp_path):
    # nanochat's zero-initialised output projections pass no gradient below the GPT for the first two steps,
    # so the hold must outlast them to mean anything: held until batch 4, the compressor (not held) moves
    # before that, the held parts only after.
    cfg = tier1(overfit10, tmp_path / "staged", "max_duration=6ba", "device_train_batch_size=2",
                "scheduler={name: constant_with_warmup, t_warmup: 0ba}",  # no zero-lr warmup step
                "algorithms={unfreeze: {modules: [sam, clip], at: 4ba}}", "callbacks={}")
    trainer, model, _ = build_trainer(cfg)
    seen = []
    from composer.core import Callback

    class Snap(Callback):
        def batch_end(self, state, logger):
            seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
    trainer.state.callbacks.append(Snap())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit()
    held = [n for n in before if n.startswith(("sam.", "clip.")) and not n.startswith(("sam.net_2", "sam.net_3"))]
    assert held and len(seen) == 6
    for n in held:  # batches 0-3: held
        assert torch.equal(seen[3][n], before[n]), n
    assert sum(not torch.equal(seen[5][n], seen[3][n]) for n in held) > len(held) // 2  # batches 4-5: trained
    for part in ("sam.net_2", "projector.", "gpt."):  # never held: moving before batch 4
        assert any(not torch.equal(seen[3][n], before[n]) for n in before if n.startswith(part)), part


@pytest.mark.slow
def test_collapse_regression_guard(overfit10, tmp_path):
    """Tier-1's configured optimizer (all parts trainable, the encoder at its own lr) for 60 batches keeps the
    ten images' features apart; the same run with the encoder at the GPT's lr — the failure this guards
    against — collapses them. The two outcomes straddle the threshold, so the test can fail either way."""
    steps = ["max_duration=60ba", "callbacks={vision_collapse: {interval: 20, probes: 10}}"]
    runs = {"configured": [], "uniform": ["optimizer.param_groups={}"]}
    final = {}
    for name, extra in runs.items():
        trainer, _, _ = build_trainer(tier1(overfit10, tmp_path / name, *steps, *extra))
        trainer.fit()
        final[name] = cosines(tmp_path / name)
    start = final["configured"][0]
    assert final["uniform"][0] == pytest.approx(start, abs=1e-6)  # same init, same probe
    # Measured (BENCHMARKS.md, Tier-1 seed table): the configured runs peak at 0.87-0.96 around batch 20,
    # then fall; the uniform run is at 1.000 from batch 20 on.
    assert final["uniform"][-1] > 0.99 and max(final["configured"]) < 0.98, final
