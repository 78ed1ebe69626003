"""`meduniverse serve MODEL_DIR`: a small web page (Flask) where a clinician drops an image (PNG,
JPEG, DICOM, NIfTI), picks one of the model's tasks, and sees the class probabilities or the mask
over the image; the model card is one click away. Nothing is stored: each upload is read from a
temporary file that is deleted at once."""

import base64
import html
import io
from pathlib import Path
import tempfile

from flask import Flask, request
import numpy as np
from PIL import Image

from meduniverse.core.errors import DataError, MeduniverseError
from meduniverse.core.tasks import task_type
from meduniverse.data.images import SUFFIXES, read_frames
from meduniverse.interfaces.page import CSS
from meduniverse.interfaces.predict import mask_ids, predict_frames, task_card
from meduniverse.models.universal import UniversalModel

MAX_UPLOAD = 64 * 1024 * 1024
PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>meduniverse: {title}</title>
<style>{css} .result{{margin-top:1em}} .error{{color:#b00020}}
#overlay{{width:384px;image-rendering:pixelated}}
.bar{{background:#4c72b0;height:1em}}</style>
</head><body><h1>meduniverse: {title}</h1>
<p>A research model, not a medical device. <a id="card-link" href="/card">Model card</a></p>
<form id="form" method="post" action="/predict" enctype="multipart/form-data">
<p><label>Image (PNG, JPEG, BMP, TIFF, DICOM, NIfTI, .npy):
<input id="image" type="file" name="image" required></label></p>
<p><label>Task: <select id="task" name="task">{options}</select></label></p>
<p><button id="submit" type="submit">Predict</button></p></form>
<div id="result" class="result">{result}</div></body></html>"""


def png_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image in RGB with the predicted foreground tinted cyan."""
    rgb = np.stack([image] * 3, -1) if image.ndim == 2 else image.copy()
    tint = np.array([0, 200, 255], np.float32)
    where = mask > 0
    rgb[where] = (0.5 * rgb[where] + 0.5 * tint).astype(np.uint8)
    return rgb


def result_html(model: UniversalModel, card: dict, task: str, name: str, data: bytes) -> str:
    """The prediction for one uploaded file (its first frame), as HTML."""
    suffix = next((s for s in SUFFIXES if name.lower().endswith(s)), "")
    if not suffix:
        raise MeduniverseError(f"{name}: not a supported image file ({', '.join(SUFFIXES)})")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            frames = read_frames(path)
        except DataError as exc:  # the message names the upload, not the server's temporary file
            raise DataError(str(exc).replace(str(path), name)) from None
    prediction = predict_frames(model, card, task, frames[:1])[0]
    entry = task_card(card, task)
    note = f" (frame 1 of {len(frames)})" if len(frames) > 1 else ""
    head = f"<h2>{html.escape(task)}: {html.escape(name)}{note}</h2>"
    if task_type(entry["type"]).segmentation:
        ids = mask_ids(prediction.probs)
        share = float((ids > 0).mean())
        return (
            head + f'<p id="mask-share">foreground: {share:.1%} of the image</p>'
            '<img id="overlay" alt="mask over the image" '
            f'src="{png_uri(overlay(frames[0].image, ids))}">'
        )
    rows = "".join(
        f'<tr><td>{html.escape(c)}</td><td class="probability">{p:.3f}</td>'
        f'<td><div class="bar" style="width:{200 * p:.0f}px"></div></td></tr>'
        for c, p in zip(entry["classes"], prediction.probs.tolist(), strict=True)
    )
    return (
        head + "<table "
        f'id="probabilities"><tr><th>class</th><th>probability</th><th></th></tr>{rows}</table>'
    )


def make_app(model: UniversalModel, card: dict, card_page: str) -> Flask:
    """The web app of one model.

    Args:
        model: the universal model (eval mode, on its device).
        card: its card.json (tasks, inputs).
        card_page: the model card as an HTML fragment.
    """
    app = Flask("meduniverse")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    title = html.escape(str(card.get("federation", "model")))

    def page(result: str = "", chosen: str | None = None) -> str:
        options = "".join(
            f'<option value="{html.escape(t["name"])}"{" selected" if t["name"] == chosen else ""}>'
            f"{html.escape(t['name'])} ({html.escape(t['type'])})</option>"
            for t in card["tasks"]
        )
        return PAGE.format(title=title, css=CSS, options=options, result=result)

    @app.get("/")
    def index() -> str:
        return page()

    @app.get("/card")
    def show_card() -> str:
        return (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><style>{CSS}</style>'
            f'</head><body><p><a href="/">Back</a></p>{card_page}</body></html>'
        )

    @app.post("/predict")
    def predict() -> tuple[str, int]:
        upload, task = request.files.get("image"), request.form.get("task", "")
        if upload is None or not upload.filename:
            return page('<p class="error" id="error">Choose an image file first.</p>', task), 400
        try:
            return page(result_html(model, card, task, upload.filename, upload.read()), task), 200
        except MeduniverseError as exc:
            return page(f'<p class="error" id="error">{html.escape(str(exc))}</p>', task), 400

    return app
