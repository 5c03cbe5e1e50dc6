#!/usr/bin/env python3
"""Drive `sd serve` with the real client libraries, unchanged: webuiapi (AUTOMATIC1111 API) and openai.

Usage: check_clients.py URL [--api-key KEY] [--model NAME] --ip-url URL2 --ip-picture PNG

URL is the server's root (http://127.0.0.1:PORT). The server must run the 32x32 demo model
(models/sd-tiny-shapes) with --api-key KEY. URL2 is a second server, without a key, on the tiny SD1 fixture model
with the IP-Adapter fixtures (scripts/fixtures/gen_94_ip_adapter.py) in its --controlnet-dir; PNG is the image
prompt. Every check asserts on what the library hands its caller, so a
response the library cannot parse, or parses into the wrong thing, fails here the way it would fail for a user.
All checks run; the script prints one line per failure, then a summary, and exits 1 if any failed.

Run by crates/sd-cli/tests/it/serve_clients.rs with target/clients/bin/python (made by `cargo xtask setup`, versions
pinned in scripts/clients/requirements.txt).
"""

import argparse
import base64
import importlib.metadata
import io
import os
import sys
import tempfile
import traceback

import openai
import PIL.Image
import PIL.ImageDraw
import requests
import webuiapi

SIZE = 32
PROMPT = "a red square on a green background"


def init_image():
    """A 32x32 picture of the kind the demo model draws, made here so img2img and edits need no other check."""
    img = PIL.Image.new("RGB", (SIZE, SIZE), (30, 60, 200))
    PIL.ImageDraw.Draw(img).ellipse((8, 8, 24, 24), fill=(230, 210, 20))
    return img


def png_of(b64):
    img = PIL.Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


# --- webuiapi -------------------------------------------------------------------------------------------------


def webui(ctx):
    api = webuiapi.WebUIApi(baseurl=ctx.url + "/sdapi/v1")
    # The server takes HTTP Basic with the API key as the password (any user name): webuiapi only speaks Basic.
    api.set_auth("webuiapi", ctx.key)
    return api


def check_webui_auth_required(ctx):
    api = webuiapi.WebUIApi(baseurl=ctx.url + "/sdapi/v1")
    try:
        api.txt2img(prompt=PROMPT, seed=1, steps=1, width=SIZE, height=SIZE)
    except RuntimeError as e:
        assert e.args[0] == 401, f"txt2img without credentials: expected HTTP 401, got {e.args!r}"
        return
    raise AssertionError("txt2img without credentials succeeded although the server has an API key")


def check_webui_txt2img(ctx):
    api = webui(ctx)
    r = api.txt2img(prompt=PROMPT, seed=42, steps=8, width=SIZE, height=SIZE, sampler_name="Euler a")
    assert len(r.images) == 1, f"expected 1 image, got {len(r.images)}"
    assert isinstance(r.image, PIL.Image.Image), f"result.image is {type(r.image)}"
    assert r.image.size == (SIZE, SIZE), f"image size {r.image.size}, expected {SIZE}x{SIZE}"
    assert isinstance(r.info, dict), f"`info` is not a JSON object string, webuiapi kept it as {r.info!r:.200}"
    assert r.info.get("seed") == 42, f"info.seed = {r.info.get('seed')!r}, expected 42"
    infotexts = r.info.get("infotexts")
    assert isinstance(infotexts, list) and len(infotexts) == 1, f"info.infotexts = {infotexts!r}"
    assert "Seed: 42" in infotexts[0] and "Steps: 8" in infotexts[0], f"infotext {infotexts[0]!r}"
    assert "Sampler: Euler a" in infotexts[0], f"infotext does not name the sampler: {infotexts[0]!r}"
    assert isinstance(r.parameters, dict), f"`parameters` is {r.parameters!r:.200}"
    assert r.parameters.get("prompt") == PROMPT, f"parameters.prompt = {r.parameters.get('prompt')!r}"
    assert r.parameters.get("steps") == 8, f"parameters.steps = {r.parameters.get('steps')!r}"
    # Same request, same seed: the same picture (what makes a seed worth reporting).
    again = api.txt2img(prompt=PROMPT, seed=42, steps=8, width=SIZE, height=SIZE, sampler_name="Euler a")
    assert again.image.tobytes() == r.image.tobytes(), "the same seed gave a different picture"


def check_webui_batch(ctx):
    # sd-rs draws a batch from one generator (documented in crates/sd-server/src/a1111.rs), so both images of a
    # batch report its seed, and batch b of n_iter uses seed + b; A1111 would number each image's seed instead.
    api = webui(ctx)
    r = api.txt2img(prompt=PROMPT, seed=100, steps=4, width=SIZE, height=SIZE, batch_size=2, n_iter=1)
    assert len(r.images) == 2, f"batch_size=2: expected 2 images, got {len(r.images)}"
    assert r.info.get("all_seeds") == [100, 100], f"info.all_seeds = {r.info.get('all_seeds')!r}"
    assert len(r.info.get("infotexts", [])) == 2, f"info.infotexts = {r.info.get('infotexts')!r}"
    assert r.images[0].tobytes() != r.images[1].tobytes(), "the two images of a batch are the same picture"
    r = api.txt2img(prompt=PROMPT, seed=100, steps=4, width=SIZE, height=SIZE, batch_size=1, n_iter=2)
    assert len(r.images) == 2, f"n_iter=2: expected 2 images, got {len(r.images)}"
    assert r.info.get("all_seeds") == [100, 101], f"info.all_seeds = {r.info.get('all_seeds')!r}"
    assert r.images[0].tobytes() != r.images[1].tobytes(), "seeds 100 and 101 gave the same picture"


def check_webui_img2img(ctx):
    api = webui(ctx)
    src = init_image()
    r = api.img2img(
        images=[src],
        prompt=PROMPT,
        denoising_strength=0.5,
        seed=7,
        steps=8,
        width=SIZE,
        height=SIZE,
        sampler_name="Euler a",
        inpaint_full_res=False,
    )
    assert len(r.images) == 1, f"expected 1 image, got {len(r.images)}"
    assert r.image.size == (SIZE, SIZE), f"image size {r.image.size}, expected {SIZE}x{SIZE}"
    assert isinstance(r.info, dict), f"`info` is not a JSON object string: {r.info!r:.200}"
    assert r.info.get("seed") == 7, f"info.seed = {r.info.get('seed')!r}, expected 7"
    assert "Denoising strength: 0.5" in r.info["infotexts"][0], f"infotext {r.info['infotexts'][0]!r}"
    assert isinstance(r.parameters, dict), f"`parameters` is {r.parameters!r:.200}"
    assert r.image.convert("RGB").tobytes() != src.tobytes(), "img2img returned its input unchanged"


def check_webui_models_and_options(ctx):
    api = webui(ctx)
    models = api.get_sd_models()
    assert isinstance(models, list) and models, f"sd-models: {models!r}"
    mine = [m for m in models if m.get("model_name") == ctx.model]
    assert mine, f"sd-models has no model_name {ctx.model!r}: {models!r}"
    title = mine[0]["title"]
    assert title in api.util_get_model_names(), "util_get_model_names() lacks the model's title"
    options = api.get_options()
    assert isinstance(options, dict), f"options: {options!r}"
    assert options.get("sd_model_checkpoint") == title, (
        f"options.sd_model_checkpoint = {options.get('sd_model_checkpoint')!r}, the loaded model's title is {title!r}"
    )
    assert api.util_get_current_model() == title
    api.set_options({"sd_model_checkpoint": title})
    assert api.get_options().get("sd_model_checkpoint") == title, "set_options changed the checkpoint"
    # util_set_model lower-cases the name and picks the closest title, then sets it through /options.
    api.util_set_model(ctx.model)
    assert api.util_get_current_model() == title


def check_webui_samplers_and_scripts(ctx):
    api = webui(ctx)
    names = api.util_get_sampler_names()
    for wanted in ("Euler a", "Euler", "DPM++ 2M"):
        assert wanted in names, f"samplers lack {wanted!r}: {names!r}"
    scripts = api.get_scripts()
    assert isinstance(scripts, dict), f"scripts: {scripts!r}"
    for kind in ("txt2img", "img2img"):
        assert isinstance(scripts.get(kind), list), f"scripts[{kind!r}] = {scripts.get(kind)!r}"
    for name, fn in (("upscalers", api.get_upscalers), ("loras", api.get_loras), ("embeddings", api.get_embeddings)):
        value = fn()
        assert isinstance(value, (list, dict)), f"{name}: {value!r:.200}"
    assert isinstance(api.get_cmd_flags(), dict), "cmd-flags is not an object"


def check_webui_progress_and_interrupt(ctx):
    api = webui(ctx)
    p = api.get_progress()
    assert isinstance(p, dict), f"progress: {p!r}"
    for key in ("progress", "eta_relative", "state", "textinfo"):
        assert key in p, f"progress lacks {key!r}: {p!r}"
    # Between jobs, what util_wait_for_ready waits for: progress 0 and no job.
    assert p["progress"] == 0 and p["state"].get("job_count") == 0, f"idle server reports {p!r}"
    api.util_wait_for_ready(check_interval=0.2)
    # An interrupt while idle must not carry over into the next job (it did in early A1111 versions).
    api.interrupt()
    r = api.txt2img(prompt=PROMPT, seed=3, steps=8, width=SIZE, height=SIZE)
    assert len(r.images) == 1 and r.image.size == (SIZE, SIZE), "no image after an idle interrupt"
    assert "Steps: 8" in r.info["infotexts"][0], f"job after an idle interrupt: {r.info['infotexts'][0]!r}"


def check_webui_ip_adapter_unit(ctx):
    # A1111's ControlNet extension runs IP-Adapters as ControlNet units: webuiapi sends them as any other unit.
    assert ctx.ip_url, "needs --ip-url: a server on the tiny SD1 fixture model with IP-Adapters in --controlnet-dir"
    api = webuiapi.WebUIApi(baseurl=ctx.ip_url + "/sdapi/v1")
    models = api.controlnet_model_list()
    assert "ip-adapter_sd15" in models, f"controlnet_model_list() = {models!r}"
    modules = api.controlnet_module_list()
    assert "ip-adapter_clip_sd15" in modules, f"controlnet_module_list() = {modules!r}"
    picture = PIL.Image.open(ctx.ip_picture)
    unit = webuiapi.ControlNetUnit(image=picture, module="ip-adapter_clip_sd15", model="ip-adapter_sd15", weight=0.8)
    args = dict(prompt="a red circle", seed=5, steps=4, width=SIZE, height=SIZE, sampler_name="Euler")
    # A fresh `alwayson_scripts` each call: webuiapi's default is one shared dict that keeps the units of an
    # earlier call (it clears them only for servers whose /scripts lists "controlnet m2m").
    r = api.txt2img(controlnet_units=[unit], alwayson_scripts={}, **args)
    assert len(r.images) == 1 and r.image.size == (SIZE, SIZE), f"images {r.images!r}"
    infotext = r.info["infotexts"][0]
    assert 'ControlNet 0: "Module: ip-adapter_clip, Model: ip-adapter_sd15, Weight: 0.8' in infotext, infotext
    plain = api.txt2img(alwayson_scripts={}, **args)
    assert plain.image.tobytes() != r.image.tobytes(), "the IP-Adapter unit did not change the picture"
    window = webuiapi.ControlNetUnit(image=picture, module="ip-adapter-auto", model="ip-adapter_sd15",
                                     guidance_start=0.5)
    try:
        api.txt2img(controlnet_units=[window], alwayson_scripts={}, **args)
    except RuntimeError as e:
        assert e.args[0] == 422 and "guidance_start" in e.args[1], f"a guidance window: {e.args!r}"
        return
    raise AssertionError("an IP-Adapter unit with guidance_start 0.5 was accepted")


# --- openai ---------------------------------------------------------------------------------------------------


def oai(ctx, key=None):
    return openai.OpenAI(base_url=ctx.url + "/v1", api_key=key or ctx.key, max_retries=0, timeout=120)


def check_openai_generate(ctx):
    res = oai(ctx).images.generate(
        prompt=PROMPT,
        n=2,
        size=f"{SIZE}x{SIZE}",
        response_format="b64_json",
        model=ctx.model,
        extra_body={"seed": 5, "steps": 8},
    )
    assert isinstance(res.created, int) and res.created > 0, f"created = {res.created!r}"
    assert len(res.data) == 2, f"n=2: expected 2 images, got {len(res.data)}"
    imgs = []
    for d in res.data:
        assert d.b64_json, f"no b64_json in {d!r:.200}"
        img = png_of(d.b64_json)
        assert img.format == "PNG", f"format {img.format}"
        assert img.size == (SIZE, SIZE), f"image size {img.size}, expected {SIZE}x{SIZE}"
        imgs.append(img)
    assert imgs[0].tobytes() != imgs[1].tobytes(), "n=2 gave the same picture twice"


def check_openai_url(ctx):
    res = oai(ctx).images.generate(prompt=PROMPT, size=f"{SIZE}x{SIZE}", response_format="url", extra_body={"steps": 4})
    assert len(res.data) == 1 and res.data[0].url, f"no url in {res.data!r:.200}"
    url = res.data[0].url
    assert url.startswith(ctx.url + "/"), f"url {url!r} is not on the server"
    # The server keeps its images behind the API key, so the caller fetches with it.
    got = requests.get(url, headers={"Authorization": f"Bearer {ctx.key}"}, timeout=60)
    assert got.status_code == 200, f"GET {url}: HTTP {got.status_code} {got.text[:200]!r}"
    img = PIL.Image.open(io.BytesIO(got.content))
    assert img.format == "PNG" and img.size == (SIZE, SIZE), f"{img.format} {img.size}"


def check_openai_edit(ctx):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input.png")
        init_image().save(path)
        with open(path, "rb") as f:
            res = oai(ctx).images.edit(
                image=f,
                prompt=PROMPT,
                size=f"{SIZE}x{SIZE}",
                response_format="b64_json",
                extra_body={"seed": 9, "steps": 8},
            )
    assert len(res.data) == 1, f"expected 1 image, got {len(res.data)}"
    img = png_of(res.data[0].b64_json)
    assert img.format == "PNG" and img.size == (SIZE, SIZE), f"{img.format} {img.size}"


def check_openai_models(ctx):
    ids = [m.id for m in oai(ctx).models.list()]
    assert ctx.model in ids, f"models.list() ids {ids!r} lack {ctx.model!r}"


def check_openai_bad_size(ctx):
    try:
        oai(ctx).images.generate(prompt="x", size="33x32")
    except openai.BadRequestError as e:
        assert e.status_code == 400, f"status {e.status_code}"
        # openai unwraps {"error": {...}} into e.body; a body of another shape stays whole.
        assert isinstance(e.body, dict) and "message" in e.body, f"error body is not OpenAI-shaped: {e.body!r}"
        assert "multiple of 8" in e.body["message"], f"message does not say why: {e.body['message']!r}"
        return
    raise AssertionError("size 33x32 was accepted")


def check_openai_wrong_key(ctx):
    try:
        oai(ctx, key="sk-wrong").models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401, f"status {e.status_code}"
        return
    raise AssertionError("a wrong API key was accepted")


CHECKS = [
    check_webui_auth_required,
    check_webui_txt2img,
    check_webui_batch,
    check_webui_img2img,
    check_webui_models_and_options,
    check_webui_samplers_and_scripts,
    check_webui_progress_and_interrupt,
    check_webui_ip_adapter_unit,
    check_openai_generate,
    check_openai_url,
    check_openai_edit,
    check_openai_models,
    check_openai_bad_size,
    check_openai_wrong_key,
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="server root, e.g. http://127.0.0.1:7860")
    ap.add_argument("--api-key", default="sk-test-key-123", dest="key")
    ap.add_argument("--model", default="sd-tiny-shapes", help="name of the model the server runs")
    ap.add_argument("--ip-url", default=None, help="root of the server with IP-Adapters (tiny SD1 fixture model)")
    ap.add_argument("--ip-picture", default=None, help="the IP-Adapter image prompt (fixtures/ip_adapter/picture.png)")
    ctx = ap.parse_args()
    ctx.url = ctx.url.rstrip("/")
    ctx.ip_url = ctx.ip_url.rstrip("/") if ctx.ip_url else None
    failed = []
    for check in CHECKS:
        try:
            check(ctx)
            print(f"ok   {check.__name__}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the script fails
            failed.append(check.__name__)
            print(f"FAIL {check.__name__}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=-3)
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("webuiapi", "openai"))
    print(f"check_clients: {len(CHECKS) - len(failed)} passed, {len(failed)} failed ({versions}) against {ctx.url}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
