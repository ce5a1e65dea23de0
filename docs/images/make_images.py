"""Regenerate the README pictures from a real run's output directory.

    .venv/bin/python -m trainer.train --run IMPALA --env CartPole-v1 \
        --stop '{"episode_reward_mean":150,"time_total_s":120}' --output-dir /tmp/notify-demo
    .venv/bin/python docs/images/make_images.py /tmp/notify-demo

Writes ``reward-curve.png`` (exactly what ``shared.plots.reward_curve_png`` sends and serves) and
``teams-card.png``: a preview of the Adaptive Card rlq posts to Teams, drawn here with Pillow from
the card's own JSON (TextBlocks, FactSet, Image, actions). It is an approximation of how Teams
renders the card, not a screenshot of Teams.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

from shared.adapters.notify.teams import build_payload
from shared.contracts.completion import CompletionMessage
from shared.curves import load_metrics
from shared.plots import reward_curve_png

HERE = Path(__file__).parent
FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
COLOURS = {"Good": "#237b4b", "Attention": "#c4314b", "Warning": "#bd6b00", "Default": "#242424"}


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONTS / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)


def completion_from(run_dir: Path, points: list[dict]) -> CompletionMessage:
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    last = points[-1] if points else {}
    return CompletionMessage(
        message_id="cartpole-demo:completed",
        request_id="cartpole-demo",
        run_id="rlq-cartpole-demo",
        status="Completed" if not summary.get("error") else "Failed",
        stop_reason=summary.get("stop_reason") or "reward_reached",
        experiment="cartpole",
        algorithm=summary.get("algorithm") or "IMPALA",
        env=summary.get("env") or "CartPole-v1",
        final_reward=summary.get("final_reward", last.get("episode_reward_mean")),
        best_reward=summary.get("best_reward", max((p.get("episode_reward_mean") or 0) for p in points)),
        iterations=summary.get("iterations", last.get("iteration")),
        timesteps=summary.get("timesteps", last.get("timesteps")),
        duration_s=summary.get("duration_s", last.get("time_total_s")),
        checkpoint_path=summary.get("checkpoint_path") or "file:///data/runs/cartpole-demo/checkpoints/final",
        error=summary.get("error"),
    )


def draw_card(card: dict, width: int = 720) -> Image.Image:
    """Lay the card's elements out top to bottom, roughly as Teams does."""
    pad, y = 24, 24
    canvas = Image.new("RGB", (width, 2400), "#f5f5f5")
    d = ImageDraw.Draw(canvas)
    body_w = width - 2 * pad - 24
    x0 = pad + 12
    top = y
    y += 16
    for element in card["body"]:
        kind = element["type"]
        if kind == "TextBlock":
            # DejaVu has no emoji: drop them (the headline's colour dot stands in for the icon)
            text = "".join(c for c in element["text"] if ord(c) < 0x2300 or 0x2500 <= ord(c) < 0x2600).strip()
            large = element.get("size") == "Large"
            size = 22 if large else (12 if element.get("size") == "Small" else 14)
            f = font(size, element.get("weight") == "Bolder")
            colour = COLOURS.get(element.get("color", "Default"), "#242424")
            if element.get("isSubtle"):
                colour = "#616161"
            if large:
                d.ellipse((x0, y + 6, x0 + 16, y + 22), fill=colour)
                d.text((x0 + 26, y), text, font=f, fill=colour)
                y += 34
            else:
                for line in text.splitlines()[:6]:
                    d.text((x0, y), line[:90], font=f, fill=colour)
                    y += 20
                y += 6
        elif kind == "FactSet":
            y += 4
            for fact in element["facts"]:
                d.text((x0, y), fact["title"], font=font(13, True), fill="#242424")
                value = fact["value"]
                if len(value) > 62:
                    value = value[:29] + "…" + value[-32:]
                d.text((x0 + 170, y), value, font=font(13), fill="#242424")
                y += 21
            y += 10
        elif kind == "Image" and element["url"].startswith("data:image/png;base64,"):
            picture = Image.open(io.BytesIO(base64.b64decode(element["url"].split(",", 1)[1]))).convert("RGB")
            height = round(picture.height * body_w / picture.width)
            picture = picture.resize((body_w, height), Image.Resampling.LANCZOS)
            canvas.paste(picture, (x0, y))
            y += picture.height + 12
    bx = x0
    for action in card.get("actions", []):
        label = action["title"]
        w = int(d.textlength(label, font=font(13, True))) + 28
        d.rounded_rectangle((bx, y, bx + w, y + 32), radius=4, outline="#d1d1d1", fill="white")
        d.text((bx + 14, y + 8), label, font=font(13, True), fill="#242424")
        bx += w + 8
    y += 32 + 20
    card_img = canvas.crop((0, 0, width, y + pad))
    # white card on the grey channel background
    framed = Image.new("RGB", card_img.size, "#f5f5f5")
    mask = Image.new("L", card_img.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle((pad, top, width - pad, y), radius=8, fill=255)
    white = Image.new("RGB", card_img.size, "white")
    framed.paste(white, (0, 0), mask)
    region = (pad, top, width - pad, y)
    framed.paste(card_img.crop(region), region[:2], mask.crop(region))
    ImageDraw.Draw(framed).rounded_rectangle(region, radius=8, outline="#e0e0e0")
    return framed


def main(run_dir: Path) -> None:
    points = load_metrics(run_dir / "metrics.jsonl")
    if not points:
        raise SystemExit(f"{run_dir}/metrics.jsonl has no iterations")
    message = completion_from(run_dir, points)
    title = f"{message.experiment}: {message.algorithm} {message.env}"
    (HERE / "reward-curve.png").write_bytes(reward_curve_png(points, title=title, target=150.0))
    payload = build_payload(
        message, public_base_url="https://rlq.example.com", points=points, target_reward=150.0
    )
    card = json.loads(payload.body)["attachments"][0]["content"]
    draw_card(card).save(HERE / "teams-card.png", optimize=True)
    print(f"{len(points)} iterations; card payload {len(payload.body)} bytes, image {payload.image}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/notify-demo"))
