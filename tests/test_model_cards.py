"""Every shipped weight carries its model card (docs/models.md, also in the file's
safetensors metadata), and the card changes nothing the loaders load or generate."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from energytta.checkpoint import ASSETS
from research import model_cards

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in ASSETS.glob("*.safetensors"))


def test_every_shipped_file_has_its_page_card_in_its_metadata():
    page = model_cards.cards((ROOT / "docs" / "models.md").read_text(encoding="utf-8"))
    assert sorted(page) == SHIPPED and len(SHIPPED) == 6
    for name in SHIPPED:
        card = model_cards.read(ASSETS / name)[1].get(model_cards.KEY)
        assert card == page[name], f"{name}: run python -m research.model_cards"
        for part in ("Data:", "Recipe:", "Intended use:", "Limits:", "Quality"):
            assert part in card, (name, part)
    assert model_cards.main(["--check"]) == 0


def test_the_training_log_lists_every_shipped_file():
    text = (ROOT / "research" / "reports" / "training_log.md").read_text(encoding="utf-8")
    assert [n for n in SHIPPED if f"| `{n}` |" not in text] == []


def _without_card(src: Path, dst: Path) -> Path:
    tensors, meta = model_cards.read(src)
    meta.pop(model_cards.KEY, None)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _sample(path: Path) -> bytes:
    from energytta.pipeline import TextToAudio

    pipe = TextToAudio.from_pretrained(str(path))
    wavs, _ = pipe(["a bell rings twice slowly"], seed=1, iterations=2, duration=1.0)
    return b"".join(np.ascontiguousarray(w).tobytes() for w in wavs)


def test_a_card_changes_nothing_that_loads_or_samples(tmp_path):
    """The shipped student with and without its card: the same audio to the byte; the
    vocoder and the classifier load the same weights."""
    from energytta.audio.vocoder import load_part, part_settings, trained_vocoder
    from energytta.config import load_config
    from energytta.eval.classifier import load_classifier

    student = tmp_path / "student.safetensors"
    shutil.copy(ASSETS / "student.safetensors", student)
    bare = _without_card(student, tmp_path / "bare.safetensors")
    assert _sample(student) == _sample(bare)

    vocoder = ASSETS / "vocoder.safetensors"
    bare_vocoder = _without_card(vocoder, tmp_path / "vocoder.safetensors")
    assert part_settings(vocoder, "vocoder", "--vocoder") == part_settings(
        bare_vocoder, "vocoder", "--vocoder")
    cfg = load_config("vocoder")
    states = []
    for path in (vocoder, bare_vocoder):
        module = trained_vocoder(cfg)
        load_part(path, module, cfg, "vocoder", "--vocoder")
        states.append(module.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

    classifier = ASSETS / "synth_classifier.safetensors"
    (a, meta_a), (b, meta_b) = (load_classifier(p) for p in (
        classifier, _without_card(classifier, tmp_path / "clf.safetensors")))
    assert meta_a == meta_b
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_writing_a_card_keeps_every_tensor_and_key(tmp_path):
    path = tmp_path / "teacher.safetensors"
    shutil.copy(ASSETS / "teacher.safetensors", path)
    before_tensors, before_meta = model_cards.read(path)
    model_cards.write_card(path, "## `teacher.safetensors`\n\nanother card\n")
    tensors, meta = model_cards.read(path)
    assert meta == {**before_meta, "model_card": "## `teacher.safetensors`\n\nanother card\n"}
    assert all(torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype
               for k, v in before_tensors.items()) and tensors.keys() == before_tensors.keys()


def test_the_readme_quality_table_copies_the_quality_page():
    """Each README row (model, iterations, attributes, type, FD, CPU s) is a row of
    research/reports/quality.md, rounded as shown."""
    page = (ROOT / "research" / "reports" / "quality.md").read_text(encoding="utf-8")
    header = next(line for line in page.splitlines() if line.startswith("| model | K |"))
    col = {name: i for i, name in enumerate(c.strip() for c in header.strip("|").split("|"))}
    rows = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == len(col) and cells[1] not in ("K", "---"):
            rows[(cells[0], cells[1])] = cells
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = {"teacher": "teacher", "student": "student", "guided": "guided",
             "caption-only": "captiononly", "real clips": "real clips"}
    checked = 0
    for line in readme.split("## Quality", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 7 or not any(cells[0].startswith(n) for n in names):
            continue
        model = names[next(n for n in names if cells[0].startswith(n))]
        q = rows[(model, cells[2] or "–")]
        assert cells[3] == q[col["attributes ↑"]] and cells[4] == q[col["type ↑"]], cells
        assert abs(float(cells[5]) - float(q[col["FD clf ↓"]])) <= 0.051, cells  # one decimal
        cpu = q[col["CPU s/clip"]]
        assert cells[6] == (cpu if cpu != "–" else ""), (model, cells)
        checked += 1
    assert checked == 5


def test_a_report_row_keeps_its_key_when_the_card_is_written(tmp_path):
    """Report rows key a checkpoint by content without its card, so writing the card (which
    quotes the quality page's rows) does not make those rows stale; other metadata counts."""
    from research.rows import sha256

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.arange(6.0)}, str(path), metadata={"kind": "teacher"})
    before = sha256(path)
    model_cards.write_card(path, "## `m.safetensors`\nData: none\n")
    assert sha256(path) == before
    save_file({"w": torch.arange(6.0)}, str(path), metadata={"kind": "student"})
    assert sha256(path) != before
