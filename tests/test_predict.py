"""Prediction from a fine-tuned export (also with the person view) and zero-shot emotion with a
pretrained student, end to end through launch/predict.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import uniemox.exports.hub as tm
from uniemox.data.transforms import EvalTransform, crop_person, normalize
from uniemox.eval.predict import load_views, predict_views
from uniemox.eval.scorers import classifier_scorer
from uniemox.exports.pretrain import write_pretrain_export
from uniemox.models import create_encoder, create_pretrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(REPO, "launch", "predict.py")
TINY = {"img_size": 32, "depth": 2}
NAME = "uniemox_vit_tiny_patch16"
CLASSES = ["calm", "joy", "rage", "fear"]


def predict(args):
    return subprocess.run([sys.executable, PREDICT] + list(args), cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "best"
    torch.manual_seed(0)
    model = create_encoder(NAME, num_classes=len(CLASSES), **TINY)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # probabilities far from uniform
    tm.write_export(model.state_dict(), str(out), NAME, TINY, len(CLASSES), "avg", CLASSES,
                    {"task": "single_label"})
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage.data
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()).save(root / "astronaut.jpg")  # a person
    Image.fromarray(skimage.data.chelsea()).save(root / "chelsea.png")      # a cat
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def test_person_view_averages_scene_and_person_crop(model_dir, photos, mediapipe_detector):
    model, _ = tm.create_from_export(str(model_dir))
    paths = [str(photos / "astronaut.jpg"), str(photos / "chelsea.png"), str(photos / "broken.jpg")]
    views = list(load_views(paths, 32, mediapipe_detector))
    scorer = classifier_scorer(str(model_dir), torch.device("cpu"), person_view=True)
    assert scorer.classes == CLASSES and scorer.image_size == 32 and not scorer.multi_label
    rows = predict_views(scorer.score, views, CLASSES, top_k=4)
    astro, cat, broken = rows
    assert astro["person_box"] is not None and cat["person_box"] is None and "error" in broken

    def t(image):  # the evaluation view, normalised
        return normalize(EvalTransform(32)(image))
    img = Image.open(paths[0]).convert("RGB")
    with torch.no_grad():
        scene = torch.softmax(model(t(img)[None]), -1)[0]
        person = torch.softmax(model(t(crop_person(img, astro["person_box"]))[None]), -1)[0]
        cat_only = torch.softmax(model(t(Image.open(paths[1]).convert("RGB"))[None]), -1)[0]
    got = {r["label"]: r["prob"] for r in astro["top"]}
    want = (scene + person) / 2
    assert [got[c] for c in CLASSES] == pytest.approx(want.tolist(), abs=2e-5)  # box rounding: 0.01 px
    assert not torch.allclose(scene, person, atol=1e-3)  # the crop does change the answer
    assert [dict((r["label"], r["prob"]) for r in cat["top"])[c] for c in CLASSES] == \
        pytest.approx(cat_only.tolist(), abs=1e-6)


def test_predict_cli_table_json_and_bad_input(model_dir, photos):
    proc = predict(["--model", str(model_dir), str(photos), "--format", "json", "--top-k", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    assert [os.path.basename(r["path"]) for r in rows] == ["astronaut.jpg", "broken.jpg", "chelsea.png"]
    assert "error" in rows[1] and all(len(r["top"]) == 2 for r in (rows[0], rows[2]))
    assert rows[0]["top"][0]["prob"] >= rows[0]["top"][1]["prob"] > 0
    table = predict(["--model", str(model_dir), str(photos / "astronaut.jpg")])
    assert table.returncode == 0 and table.stdout.startswith(str(photos / "astronaut.jpg") + ": ")
    missing = predict(["--model", str(model_dir), str(photos / "nope.jpg")])
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: not found: {photos / 'nope.jpg'}"
    no_model = predict(["--model", str(photos), str(photos / "astronaut.jpg")])
    assert no_model.returncode == 2 and "no model export" in no_model.stderr


@pytest.fixture(scope="module")
def pretrain_export(tmp_path_factory):
    """A pretraining export as launch/pretrain.py --export writes it (a random student and a
    random tiny teacher: zero-shot must run end to end, not be accurate)."""
    out = tmp_path_factory.mktemp("pretrain_export")
    torch.manual_seed(0)
    student = create_pretrainer(NAME, proj_dim=64, fusion="easy", **TINY)
    run_config = {"model": {"name": NAME, "arch": TINY, "fusion": "easy", "fusion_heads": 3},
                  "teacher": {"model": "uniemox-clip-tiny", "pretrained": "none"}, "train": {"seed": 0}}
    write_pretrain_export(student.state_dict(), str(out), run_config, step=1)
    return out


@pytest.fixture(scope="module")
def labelled_shards(tmp_path_factory):
    from uniemox.data.catalog import open_source
    from uniemox.data.sample import write_sample_dataset
    from uniemox.data.writer import write_shards
    root = tmp_path_factory.mktemp("labelled")
    write_sample_dataset(str(root / "images"), 1)
    write_shards(open_source(str(root / "images"), dataset="emo8"), str(root / "shards"), shard_size=4,
                 max_side=0, detector="none", num_workers=0, progress=False)
    return root


def test_zero_shot_end_to_end_files_and_labelled_split_agree(pretrain_export, labelled_shards, tmp_path):
    shards = labelled_shards / "shards"
    proc = predict(["--zero-shot", str(pretrain_export), "--eval", str(shards), "--split", "test",
                    "--out", str(tmp_path / "zs"), "--format", "json"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout)
    assert metrics["mode"] == "zero_shot" and metrics["num_samples"] == 8 and len(metrics["classes"]) == 8
    assert 0.0 <= metrics["top1"] <= metrics["top3"] <= 1.0
    assert (tmp_path / "zs" / "test.json").is_file() and (tmp_path / "zs" / "test_confusion.png").is_file()
    rows = [json.loads(line) for line in open(tmp_path / "zs" / "test_predictions.jsonl")]

    # a test image without a person box: the file's prediction equals its evaluation row
    images = labelled_shards / "images" / "test"
    for row in rows:
        name = row["key"].split("_", 2)[-1]  # key = test_<class>_<stem>
        meta = json.loads((images / row["label"] / f"{name}.json").read_text())
        if meta.get("person_box") is None:
            break
    else:
        pytest.skip("every test image has a person")
    file = images / row["label"] / f"{name}.jpg"
    proc = predict(["--zero-shot", str(pretrain_export), str(file), "--format", "json", "--top-k", "3"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = json.loads(proc.stdout)[0]["top"]
    assert [t["label"] for t in top] == [t["label"] for t in row["top"]]
    assert [t["prob"] for t in top] == pytest.approx([t["prob"] for t in row["top"]], abs=1e-5)


def test_zero_shot_scores_are_cosines_against_the_teachers_class_prompts(pretrain_export):
    from uniemox.eval.zeroshot import build_zero_shot
    torch.manual_seed(0)
    model, _ = build_zero_shot(str(pretrain_export), CLASSES, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        g = model.embed(x)
        s = model.student
        alpha = s.project_cls(s.model.forward_features(x))
        gamma = torch.nn.functional.normalize(s.fusion(alpha, alpha), dim=-1)
    assert torch.allclose(g, gamma, atol=1e-6) and torch.allclose(g.norm(dim=-1), torch.ones(2))
    assert model.text.shape == (len(CLASSES), 64) and torch.allclose(model.text.norm(dim=-1), torch.ones(4))
    assert torch.allclose(logits, model.logit_scale * g @ model.text.T, atol=1e-5)
    assert np.all(np.abs(logits.numpy()) <= model.logit_scale + 1e-4)


def test_zero_shot_prompt_ensemble_scores_follow_the_formula(pretrain_export, photos, tmp_path):
    """--templates FILE: each class is normalise(mean of its prompts' normalised teacher embeddings)
    and the logits are the scale times the cosines with it; the scores differ from the default's."""
    import torch.nn.functional as F
    from uniemox.exports.pretrain import read_pretrain_export
    from uniemox.eval.zeroshot import build_teacher, build_zero_shot

    templates = ("A {} photo.", "It feels like {}.")
    torch.manual_seed(0)  # the export's random teacher: built from the same seed each time
    model, _ = build_zero_shot(str(pretrain_export), CLASSES, torch.device("cpu"), templates=templates)
    torch.manual_seed(0)
    teacher = build_teacher(read_pretrain_export(str(pretrain_export))[2], torch.device("cpu"))
    with torch.no_grad():
        prompts = [F.normalize(teacher.encode_text([t.format(c) for c in CLASSES]), dim=-1) for t in templates]
        w = F.normalize((prompts[0] + prompts[1]) / 2, dim=-1)
        torch.testing.assert_close(model.text, w)
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(model(x), teacher.logit_scale * model.embed(x) @ w.T)

    (tmp_path / "prompts.txt").write_text("\n".join(templates) + "\n")
    runs = [predict(["--zero-shot", str(pretrain_export), str(photos / "chelsea.png"), "--format", "json",
                     "--top-k", "4", "--classes", ",".join(CLASSES)] + extra) for extra in ([], ["--templates", str(tmp_path / "prompts.txt")])]
    assert all(p.returncode == 0 for p in runs), runs[-1].stderr[-2000:]
    default, ensemble = ({t["label"]: t["prob"] for t in json.loads(p.stdout)[0]["top"]} for p in runs)
    assert set(default) == set(ensemble) == set(CLASSES)
    assert max(abs(default[c] - ensemble[c]) for c in CLASSES) > 1e-4

    bad = tmp_path / "bad.txt"
    bad.write_text("no slot here\n")
    for args in (["--zero-shot", str(pretrain_export), "--templates", str(bad)],
                 ["--model", str(photos), "--templates", "emotion"]):
        proc = predict(args + [str(photos / "chelsea.png")])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
