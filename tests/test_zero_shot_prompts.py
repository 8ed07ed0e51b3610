"""Zero-shot prompt ensembles through open_clip's zero-shot classifier builder: each class is the
normalised mean of its prompts' normalised text embeddings, checked by hand on a 3-d case (with the
scores that follow) and on the packaged teacher; template sets and files; a bad template is one
line. predict.py's use of them: tests/test_predict.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from uniemox.data.prompts import EMOTION_TEMPLATE, TEMPLATE_SETS, emotion_prompt, load_templates
from uniemox.errors import UserError
from uniemox.eval.zeroshot import class_text_embeddings
from uniemox.exports.teacher import load_teacher
from uniemox.models.zero_shot import class_embeddings

TWO = ("A {} photo.", "It feels like {}.")
# a text tower of one token per prompt: its embedding table, chosen so the sums are easy by hand
EMBEDDINGS = {"A joy photo.": [3.0, 4.0, 0.0], "It feels like joy.": [0.0, 0.0, 2.0],
              "A fear photo.": [5.0, 0.0, 0.0], "It feels like fear.": [0.0, 0.5, 0.0]}
PROMPTS = list(EMBEDDINGS)
TABLE = torch.tensor([EMBEDDINGS[p] for p in PROMPTS])


def tokenizer(texts):
    return torch.tensor([[PROMPTS.index(t)] for t in texts])


def encode_text(tokens):
    return TABLE[tokens[:, 0]]


def test_two_templates_by_hand():
    """joy: (0.6, 0.8, 0) and (0, 0, 1) -> mean (0.3, 0.4, 0.5), norm sqrt(0.5) -> (0.4243, 0.5657, 0.7071);
    fear: (1, 0, 0) and (0, 1, 0) -> (0.7071, 0.7071, 0). An image at (1, 0, 0) scores cosines 0.4243
    and 0.7071 with both templates, 0.6 and 1.0 with the first alone; at logit scale 10,
    p(fear) = 1 / (1 + e^(10 (0.4243 - 0.7071))) = 0.9442, and 1 / (1 + e^(-4)) = 0.9820 with one."""
    r, s2 = 1 / math.sqrt(2), math.sqrt(2)
    w = class_embeddings(encode_text, tokenizer, ["joy", "fear"], TWO)
    torch.testing.assert_close(w, torch.tensor([[0.3 * s2, 0.4 * s2, 0.5 * s2], [r, r, 0.0]]))
    one = class_embeddings(encode_text, tokenizer, ["joy", "fear"], TWO[:1])
    torch.testing.assert_close(one, torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]]))

    image = torch.tensor([[1.0, 0.0, 0.0]])
    torch.testing.assert_close(image @ w.t(), torch.tensor([[0.3 * s2, r]]))  # 0.4243, 0.7071
    for classes, p_fear in ((w, 0.9442), (one, 0.9820)):
        p = torch.softmax(10 * image @ classes.t(), dim=-1)
        assert p[0, 1].item() == pytest.approx(p_fear, abs=1e-4)


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("uniemox-clip-tiny-64", pretrained="uniemox-sample")


def test_the_teachers_ensemble_is_the_mean_of_its_normalised_prompts(teacher):
    classes = ["awe", "fear", "sadness"]
    w = class_text_embeddings(teacher, classes, TWO)
    for i, c in enumerate(classes):
        a, b = (F.normalize(teacher.encode_text([t.format(c)]), dim=-1)[0] for t in TWO)
        torch.testing.assert_close(w[i], F.normalize((a + b) / 2, dim=0))
    # the default is the caption template's emotion sentence alone: one prompt, its normalised embedding
    method = class_text_embeddings(teacher, classes)
    torch.testing.assert_close(method, F.normalize(teacher.encode_text([emotion_prompt(c) for c in classes]), dim=-1))
    assert not torch.allclose(w, method, atol=1e-3)


def test_template_sets_and_files(tmp_path):
    assert load_templates("method") == (EMOTION_TEMPLATE,) == (emotion_prompt("{}"),)
    emotion = load_templates("emotion")
    assert 6 <= len(emotion) <= 10 and emotion[0] == EMOTION_TEMPLATE and all(t.count("{}") == 1 for t in emotion)
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\nA {} photo.\n\n  It feels like {}.  \n")
    assert load_templates(str(path)) == TWO


@pytest.mark.parametrize("text,message", [
    ("A photo.\n", "each line needs one {} for the class name"),
    ("A {} and {} photo.\n", "each line needs one {} for the class name"),
    ("A {name} photo.\n", "each line needs one {} for the class name"),
    ("# nothing\n", "no template in it"),
])
def test_bad_templates_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("}", r"\}")):
        load_templates(str(path))
    with pytest.raises(UserError, match="neither a template set"):
        load_templates(str(tmp_path / "missing.txt"))
