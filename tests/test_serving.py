"""The scoring server (``visionsweep serve``) as its users meet it: a real server process on a free
loopback port, real HTTP requests. Every body form and task family answers what ``visionsweep.predict``
writes for the same images; per-request settings; explained requests (the reference's
``model_explainability`` and ``xai_parameters``); every kind of bad input is a 4xx naming the problem
and the server goes on; the API key; dynamic batching under 50 concurrent requests; the ONNX Runtime
runtime; worker processes; a graceful stop on SIGTERM. The batcher, the R-CNN per-request limits and the
start-up errors are also checked in process."""
from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from io import BytesIO
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import visionsweep
from visionsweep.cli import main
from visionsweep.models import create_model
from visionsweep.models.detection import with_prediction_limits
from visionsweep.serving.batching import DynamicBatcher
from conftest import TINY_SETTINGS, write_color_dataset
from jsonl_helpers import read_lines
from test_onnx_prediction import RCNN, YOLO, _scenes, _spread_yolo_scores

KEY_VARIABLE = "VISIONSWEEP_TEST_SERVING_KEY"
KEY = "s3cret-key-for-tests"
READY_TIMEOUT = 120  # seconds for a server to import torch and load its model on a busy 2-core machine
REQUEST_TIMEOUT = 60
STOP_TIMEOUT = 20


# --- a server process and HTTP -------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any  # the JSON answer


SERVER_KEY = "the server's key"  # Server.request's default: send the key the server was started with


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    api_key: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                api_key: str | None = SERVER_KEY, timeout: float = REQUEST_TIMEOUT) -> Answer:
        """``api_key``: the server's by default; None sends no key; any other text is sent as the key."""
        headers = {"Content-Type": content_type} if content_type else {}
        key = self.api_key if api_key == SERVER_KEY else api_key
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, response.headers, json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers, json.loads(error.read()))

    def score(self, body: Any, query: str = "", **options: Any) -> Answer:
        """POST /score: bytes as a PNG image, anything else as JSON."""
        if isinstance(body, bytes):
            return self.request("POST", "/score" + query, body, "image/png", **options)
        return self.request("POST", "/score" + query, json.dumps(body).encode(), "application/json", **options)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(model: Path, *options: str, log: Path, api_key: str | None = None) -> Iterator[Server]:
    """``visionsweep serve MODEL --port FREE OPTIONS`` until the block ends (then SIGTERM, kill if need be)."""
    port = _free_port()
    env = {**os.environ, **({KEY_VARIABLE: api_key} if api_key else {})}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "visionsweep.cli", "serve", str(model), "--port", str(port),
                                    *options], stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log, api_key)
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop(process)


def wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited with {server.process.returncode}:\n{server.log_text()}")
        try:
            if server.request("GET", "/ready", timeout=5).status == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.25)
    pytest.fail(f"the server was not ready within {READY_TIMEOUT} s:\n{server.log_text()}")


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=STOP_TIMEOUT)


def managed_body(images: list[bytes], **extra: Any) -> dict[str, Any]:
    return {"input_data": {"columns": ["image"], "index": list(range(len(images))),
                           "data": [base64.b64encode(image).decode() for image in images]}, **extra}


def png(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from io import BytesIO

    out = BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def predicted(model: Path, images: list[Path], tmp_path: Path, **options: Any) -> list[dict[str, Any]]:
    """What ``visionsweep.predict`` writes for ``images``, in their order, without the file names."""
    listing = tmp_path / f"listing-{len(list(tmp_path.iterdir()))}.jsonl"
    listing.write_text("".join(json.dumps({"image_url": str(image)}) + "\n" for image in images))
    lines = read_lines(visionsweep.predict(model, listing, output=listing.with_suffix(".out.jsonl"), **options).output)
    assert [line.pop("filename") for line in lines] == [str(image) for image in images]
    return lines


def assert_same_probs(answers: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(answers) == len(expected)
    for answer, line in zip(answers, expected):
        assert answer["labels"] == line["labels"]
        np.testing.assert_allclose(answer["probs"], line["probs"], rtol=0, atol=1e-6)


def assert_same_boxes(answers: list[dict[str, Any]], expected: list[dict[str, Any]], atol: float = 1e-5) -> None:
    """The same boxes per image (coordinates and scores within ``atol``, the same labels), in any order
    among equal scores; a batch of other images may change float rounding, never a box."""
    assert len(answers) == len(expected)
    for answer, line in zip(answers, expected):
        assert len(answer["boxes"]) == len(line["boxes"])
        unmatched = list(answer["boxes"])
        for item in line["boxes"]:
            match = next((other for other in unmatched if other["label"] == item["label"]
                          and abs(other["score"] - item["score"]) <= atol
                          and np.allclose(list(other["box"].values()), list(item["box"].values()), atol=atol)), None)
            assert match is not None, f"{item} has no counterpart in {unmatched}"
            unmatched.remove(match)


def concurrently(calls: list, workers: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [future.result(timeout=REQUEST_TIMEOUT * 2) for future in [pool.submit(call) for call in calls]]


# --- models --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("classifier")
    data = write_color_dataset(folder)
    result = visionsweep.train("image_classification", data, data, output=folder / "run", progress=False,
                               settings={**TINY_SETTINGS, "number_of_epochs": 1, "export_onnx": True})
    return result.run_dir, sorted((folder / "images").glob("*.png"))


@pytest.fixture(scope="module")
def yolo(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("yolo")
    data = _scenes(folder, count=4)
    result = visionsweep.train("image_object_detection", data, data, output=folder / "run", progress=False,
                               settings=YOLO)
    _spread_yolo_scores(result.model_dir)
    return result.run_dir, sorted(folder.glob("*.png"))


# The classifier server: an API key, batches of up to 8 gathered for up to 50 ms, a 1 MiB body limit and a
# pixel limit between the test images' 576 pixels and the 1600 of a 40 x 40 image.
@pytest.fixture(scope="module")
def classifier_server(classifier, tmp_path_factory) -> Iterator[Server]:
    run_dir, _ = classifier
    with running_server(run_dir, "--max-batch-size", "8", "--max-wait-ms", "50", "--max-body-mb", "1",
                        "--set", "max_image_pixels=1000", "--api-key-env", KEY_VARIABLE,
                        log=tmp_path_factory.mktemp("logs") / "classifier.log", api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def yolo_server(yolo, tmp_path_factory) -> Iterator[Server]:
    with running_server(yolo[0], log=tmp_path_factory.mktemp("logs") / "yolo.log") as server:
        yield server


# --- classification: body forms, the client, health, auth ----------------------------------------------


def test_every_body_form_answers_what_predict_writes(classifier_server, classifier, tmp_path):
    run_dir, images = classifier
    chosen = [images[0], images[7], images[3]]
    contents = [path.read_bytes() for path in chosen]
    expected = predicted(run_dir, chosen, tmp_path)

    raw = classifier_server.score(contents[0])
    octet = classifier_server.request("POST", "/score", contents[0], "application/octet-stream")
    one = classifier_server.score({"image": base64.b64encode(contents[1]).decode()})
    # The reference's samples encode with base64.encodebytes (line breaks every 76 characters), and a
    # pandas "split" frame has a row per image: both are read.
    managed = classifier_server.score({"input_data": {"columns": ["image"], "index": [0, 1, 2], "data": [
        base64.encodebytes(contents[0]).decode(), [base64.b64encode(contents[1]).decode()],
        base64.b64encode(contents[2]).decode()]}})
    without_index = classifier_server.score({"input_data": {"columns": ["image"], "data": [
        base64.b64encode(content).decode() for content in contents]}})
    for answer in (raw, octet, one, managed, without_index):
        assert answer.status == 200, answer.body
        assert isinstance(answer.body, list) and set(answer.body[0]) == {"probs", "labels"}
    assert_same_probs(raw.body + octet.body + one.body, [expected[0], expected[0], expected[1]])
    assert_same_probs(managed.body, expected)
    assert_same_probs(without_index.body, expected)


def test_the_python_client_sends_paths_and_bytes_and_raises_the_servers_message(classifier_server, classifier,
                                                                                 tmp_path):
    run_dir, images = classifier
    expected = predicted(run_dir, images[:3], tmp_path)
    answers = visionsweep.score(classifier_server.url, [images[0], str(images[1]), images[2].read_bytes()],
                                api_key=KEY, timeout=REQUEST_TIMEOUT)
    assert_same_probs(answers, expected)
    assert_same_probs(visionsweep.score(classifier_server.url + "/score", images[0], api_key=KEY), expected[:1])
    with pytest.raises(visionsweep.ScoringError, match="answered 400: 1 of the 2 images could not be scored") as error:
        visionsweep.score(classifier_server.url, [images[0], b"not an image"], api_key=KEY)
    assert error.value.status == 400
    with pytest.raises(visionsweep.ScoringError, match="(?s)answered 422: .*valid_crop_size: cannot change per"):
        visionsweep.score(classifier_server.url, images[0], api_key=KEY, settings={"valid_crop_size": 16})
    with pytest.raises(visionsweep.ScoringError, match="answered 401: the API key is wrong"):
        visionsweep.score(classifier_server.url, images[0], api_key="guess")
    with pytest.raises(visionsweep.ScoringError, match="no answer from http://127.0.0.1:1/score"):
        visionsweep.score("http://127.0.0.1:1", images[0], timeout=5)


def test_health_ready_and_the_openapi_page(classifier_server):
    assert classifier_server.request("GET", "/health", api_key=None).body == {"status": "ok"}
    ready = classifier_server.request("GET", "/ready")
    assert ready.status == 200
    assert ready.body["status"] == "ready" and ready.body["task"] == "image_classification"
    assert ready.body["runtime"] == "torch" and ready.body["labels"] == ["blue", "red"]
    assert ready.body["max_batch_size"] == 8 and ready.body["max_wait_ms"] == 50
    # The OpenAPI page and schema are open: they describe the API, which is no secret.
    with urllib.request.urlopen(classifier_server.url + "/docs", timeout=REQUEST_TIMEOUT) as page:
        assert page.status == 200 and b"swagger" in page.read().lower()
    # Answers on a kept-alive connection come at once: with Nagle's algorithm on, each would wait 40 ms for
    # the client's delayed acknowledgement (server._listen).
    connection = http.client.HTTPConnection(classifier_server.url.removeprefix("http://"), timeout=REQUEST_TIMEOUT)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        connection.request("GET", "/health")
        connection.getresponse().read()
        times.append(time.perf_counter() - started)
    connection.close()
    assert sorted(times)[5] < 0.02, times
    schema = classifier_server.request("GET", "/openapi.json", api_key=None).body
    content = schema["paths"]["/score"]["post"]["requestBody"]["content"]
    assert {"application/json", "image/*", "application/octet-stream"} <= set(content)
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_the_api_key_is_required_everywhere_but_health(classifier_server, classifier):
    image = classifier[1][0].read_bytes()
    for key, problem in ((None, "no API key was sent"), ("wrong", "the API key is wrong"),
                         (KEY + "x", "the API key is wrong")):
        for answer in (classifier_server.score(image, api_key=key), classifier_server.request("GET", "/ready",
                                                                                            api_key=key)):
            assert answer.status == 401 and answer.body["error"].startswith(problem)
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    malformed = urllib.request.Request(classifier_server.url + "/ready", headers={"Authorization": KEY})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(malformed, timeout=REQUEST_TIMEOUT)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["error"].startswith("the Authorization header is not 'Bearer <key>'")
    assert classifier_server.score(image).status == 200
    assert classifier_server.request("GET", "/health", api_key=None).status == 200
    # The key comes from the environment only: the command line and the log never show it.
    assert KEY not in " ".join(classifier_server.process.args) and KEY not in classifier_server.log_text()


# Bad requests: (what is wrong, the request, the status, words of the message). A pixel limit of 1000
# and a body limit of 1 MiB are the classifier server's.
BAD_REQUESTS = [
    ("not an image", lambda s: s.score(b"GIF89a but not really"), 400, "unreadable image"),
    ("not base64", lambda s: s.score({"image": "this is not base64!"}), 400, "\"image\" is not base64"),
    ("a bad entry among good ones", lambda s: s.score({"input_data": {"columns": ["image"], "data": [
        base64.b64encode(png((8, 8))).decode(), "%%%"]}}), 400, "input_data.data[1]\" is not base64"),
    ("not JSON", lambda s: s.request("POST", "/score", b"{'image': 1", "application/json"), 400,
     "the body is not JSON"),
    ("JSON of another shape", lambda s: s.score({"images": []}), 422, "exactly one of \"image\""),
    ("columns other than image", lambda s: s.score({"input_data": {"columns": ["img"], "data": ["AAAA"]}}), 422,
     "\"input_data.columns\" must be [\"image\"]"),
    ("no images", lambda s: s.score({"input_data": {"columns": ["image"], "data": []}}), 422,
     "must be a non-empty list"),
    ("an index of another length", lambda s: s.score({"input_data": {"index": [0], "data": ["AAAA", "AAAA"]}}),
     422, "\"input_data.index\" must be a list as long"),
    ("an image not a string", lambda s: s.score({"image": 12}), 422, "must be a base64 string, not int"),
    ("an unknown key", lambda s: s.score({"image": "AAAA", "explain": True}), 422, "unknown key(s) 'explain'"),
    ("an unknown xai_parameters option", lambda s: s.score({"image": "AAAA", "model_explainability": True,
                                                            "xai_parameters": {"steps": 4}}), 422,
     "unknown xai_parameters option(s) 'steps' in the JSON body; the options are xai_algorithm, visualizations"),
    ("n_steps below 2", lambda s: s.score({"image": "AAAA", "model_explainability": True,
                                           "xai_parameters": {"n_steps": 1}}), 422,
     "n_steps: got 1; Input should be greater than or equal to 2"),
    ("an unknown approximation method", lambda s: s.score({"image": "AAAA", "model_explainability": True,
                                                           "xai_parameters": {"approximation_method": "simpson"}}),
     422, "approximation_method: got 'simpson'; Input should be 'riemann_right'"),
    ("model_explainability not a boolean", lambda s: s.score({"image": "AAAA", "model_explainability": "maybe"}),
     422, "model_explainability: got 'maybe'; Input should be a valid boolean"),
    ("xai_parameters not an object", lambda s: s.score({"image": "AAAA", "xai_parameters": [1]}), 422,
     "\"xai_parameters\" in the JSON body must be an object of explanation options"),
    ("rows asking for other explanation options", lambda s: s.score({"input_data": {"data": [
        json.dumps({"image_base64": "AAAA", "model_explainability": True}),
        json.dumps({"image_base64": "AAAA", "model_explainability": False})]}}), 422,
     "\"input_data.data[1]\" asks for other explanation options than input_data.data[0]"),
    ("an explanation option given twice", lambda s: s.score({"image": "AAAA", "model_explainability": True,
                                                             "parameters": {"model_explainability": True}}), 422,
     "model_explainability: given both as a setting and in the request's model_explainability/xai_parameters"),
    ("a body over the limit", lambda s: s.request("POST", "/score", b"\0" * (3 * 2**20), "image/png"), 413,
     "over this server's limit of 1 MiB"),
    ("an image over the pixel limit", lambda s: s.score(png((40, 40))), 413, "image too large"),
    ("an unsupported media type", lambda s: s.request("POST", "/score", b"hello", "text/plain"), 415,
     "Content-Type 'text/plain' is not a body this endpoint reads"),
    ("a form body, curl's default", lambda s: s.request("POST", "/score", b"a=1", "application/x-www-form-urlencoded"),
     415, "curl -H 'Content-Type: image/jpeg' --data-binary @image.jpg"),
    ("an empty body", lambda s: s.request("POST", "/score", b"", "image/jpeg"), 400, "the body is empty"),
    ("a setting a request may not change", lambda s: s.score(png((8, 8)), "?valid_crop_size=16"), 422,
     "valid_crop_size: cannot change per request"),
    ("a setting of another task", lambda s: s.score({"image": base64.b64encode(png((8, 8))).decode(),
                                                     "parameters": {"box_score_thresh": 0.5}}), 422,
     "box_score_thresh: does not apply to image_classification"),
    ("settings given two ways", lambda s: s.score({"image": "AAAA", "parameters": {}}, "?nms_iou_thresh=0.4"), 422,
     "give them one way"),
    ("parameters not an object", lambda s: s.score({"image": "AAAA", "parameters": [1]}), 422,
     "\"parameters\" must be an object"),
]


@pytest.mark.parametrize("send, status, message", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_is_a_4xx_naming_the_problem_and_the_server_goes_on(classifier_server, classifier, send,
                                                                         status, message):
    answer = send(classifier_server)
    assert answer.status == status, answer.body
    assert message in answer.body["error"], answer.body
    if status == 422 and "expected" in answer.body:
        assert any("input_data" in shape for shape in answer.body["expected"])
    good = classifier_server.score(classifier[1][0].read_bytes())
    assert good.status == 200 and len(good.body) == 1
    assert "Traceback" not in classifier_server.log_text()


def _explained(answer: Answer, attributions: bool = True) -> dict[str, Any]:
    assert answer.status == 200, answer.body
    [item] = answer.body
    assert list(item) == ["probs", "labels", "visualizations", "attributions"]
    if item["visualizations"] is not None:
        assert Image.open(BytesIO(base64.b64decode(item["visualizations"], validate=True))).format == "PNG"
    if attributions:
        assert np.asarray(item["attributions"], dtype=np.float32).shape == (3, 32, 32)  # [3][crop][crop]
    return item


def test_an_explained_request_answers_the_references_visualizations_and_attributions(classifier_server,
                                                                                      classifier):
    image = base64.b64encode(classifier[1][0].read_bytes()).decode()
    plain = classifier_server.score({"image": image}).body[0]
    xai = {"xai_algorithm": "integrated_gradients", "n_steps": 4, "attributions": True}
    # The reference's online request; its model_explainability is "bool-like".
    item = _explained(classifier_server.score({"image": image, "model_explainability": "True", "xai_parameters": xai}))
    assert item["visualizations"] is not None
    assert item["labels"] == plain["labels"]
    np.testing.assert_allclose(item["probs"], plain["probs"], atol=1e-6)
    # The managed endpoint's body with the reference's MLflow rows: the options are the first row's.
    rows = {"input_data": {"columns": ["image"], "data": [json.dumps({
        "image_base64": image, "model_explainability": True, "xai_parameters": {**xai, "visualizations": False}})]}}
    again = _explained(classifier_server.score(rows))
    assert again["visualizations"] is None
    np.testing.assert_allclose(again["attributions"], item["attributions"], rtol=1e-5, atol=1e-7)  # seeded
    assert "Traceback" not in classifier_server.log_text()


def test_each_bad_image_of_a_request_is_named(classifier_server, classifier):
    good = base64.b64encode(classifier[1][0].read_bytes()).decode()
    answer = classifier_server.score({"input_data": {"columns": ["image"], "data": [
        good, base64.b64encode(b"junk").decode(), good, base64.b64encode(png((40, 40))).decode()]}})
    assert answer.status == 400  # a mix: the unreadable image decides
    assert [(p["index"], p["reason"]) for p in answer.body["images"]] == [(1, "unreadable image"),
                                                                          (3, "image too large")]
    assert answer.body["error"].startswith("2 of the 4 images could not be scored")
    assert "/tmp" not in json.dumps(answer.body)  # the server's temporary files are not the client's business


def test_50_concurrent_requests_are_batched_and_answered_as_one_by_one(classifier_server, classifier, tmp_path):
    run_dir, images = classifier
    before = classifier_server.request("GET", "/ready").body["batching"]
    chosen = [images[i % len(images)] for i in range(50)]
    answers = concurrently([lambda path=path: classifier_server.score(path.read_bytes()) for path in chosen], 50)
    assert [answer.status for answer in answers] == [200] * 50
    expected = {line_path: line for line_path, line in zip(images, predicted(run_dir, images, tmp_path))}
    assert_same_probs([answer.body[0] for answer in answers], [expected[path] for path in chosen])
    batch_sizes = [int(answer.headers["X-Batch-Size"]) for answer in answers]
    assert max(batch_sizes) > 1 and all(1 <= size <= 8 for size in batch_sizes)
    after = classifier_server.request("GET", "/ready").body["batching"]
    requests, forwards = after["requests"] - before["requests"], after["forwards"] - before["forwards"]
    assert requests == 50 and forwards < 50 and after["largest_batch"] <= 8
    # A request of more images than --max-batch-size is one request, scored in slices of 8.
    many = classifier_server.score(managed_body([path.read_bytes() for path in images] * 2))
    assert many.status == 200 and int(many.headers["X-Batch-Size"]) == 24
    assert_same_probs(many.body, [expected[path] for path in images] * 2)


# --- detection ------------------------------------------------------------------------------------------


def test_detection_answers_what_predict_writes_one_by_one_and_concurrently(yolo_server, yolo, tmp_path):
    run_dir, images = yolo
    expected = predicted(run_dir, images, tmp_path)
    assert all(line["boxes"] for line in expected)
    assert_same_boxes(yolo_server.score(managed_body([path.read_bytes() for path in images])).body, expected)
    answers = concurrently([lambda path=path: yolo_server.score(path.read_bytes()) for path in images * 4], 16)
    assert [answer.status for answer in answers] == [200] * 16
    assert_same_boxes([answer.body[0] for answer in answers], expected * 4)
    item = answers[0].body[0]["boxes"][0]
    assert list(item) == ["box", "label", "score"] and list(item["box"]) == ["topX", "topY", "bottomX", "bottomY"]
    assert all(0.0 <= value <= 1.0 for value in item["box"].values())
    assert yolo_server.request("GET", "/ready").body["task"] == "image_object_detection"


def test_explaining_a_detection_is_refused_saying_explainability_is_for_classification(yolo_server, yolo):
    image = base64.b64encode(yolo[1][0].read_bytes()).decode()
    answer = yolo_server.score({"image": image, "model_explainability": True, "xai_parameters": {"n_steps": 4}})
    assert answer.status == 422
    assert "model_explainability: does not apply to image_object_detection" in answer.body["error"]
    assert "explainability is for classification models only" in answer.body["error"]
    assert yolo_server.score({"image": image}).status == 200


def test_a_higher_box_score_thresh_per_request_gives_fewer_boxes(yolo_server, yolo, tmp_path):
    run_dir, images = yolo
    default = yolo_server.score(images[0].read_bytes()).body[0]["boxes"]
    scores = sorted(item["score"] for item in default)
    threshold = round((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2, 6)
    expected = predicted(run_dir, images[:1], tmp_path, settings={"box_score_thresh": threshold})
    by_query = yolo_server.score(images[0].read_bytes(), f"?box_score_thresh={threshold}").body
    by_body = yolo_server.score(managed_body([images[0].read_bytes()],
                                             parameters={"box_score_thresh": threshold})).body
    assert 0 < len(by_query[0]["boxes"]) < len(default)
    assert_same_boxes(by_query, expected)
    assert_same_boxes(by_body, expected)
    assert all(item["score"] > threshold for item in by_body[0]["boxes"])
    capped = yolo_server.score(images[0].read_bytes(), "?box_detections_per_img=3").body[0]["boxes"]
    assert len(capped) <= len(default)  # YOLOv5's cap is its own 300; the setting is accepted
    for query, message in (("?box_score_thresh=2", "box_score_thresh"), ("?box_score_thresh=high", "box_score_thresh"),
                           ("?box_score_thresh=0.5&box_score_thresh=0.6", "given twice"),
                           ("?img_size=320", "img_size: cannot change per request")):
        answer = yolo_server.score(images[0].read_bytes(), query)
        assert answer.status == 422 and message in answer.body["error"], (query, answer.body)


def test_requests_with_different_settings_never_share_a_forward(yolo_server, yolo, tmp_path):
    run_dir, images = yolo
    scores = sorted(item["score"] for item in yolo_server.score(images[0].read_bytes()).body[0]["boxes"])
    low, high = 0.2, round(scores[len(scores) // 2], 6)
    expected = {low: predicted(run_dir, images[:1], tmp_path, settings={"box_score_thresh": low}),
                high: predicted(run_dir, images[:1], tmp_path, settings={"box_score_thresh": high})}
    assert len(expected[high][0]["boxes"]) < len(expected[low][0]["boxes"])
    thresholds = [low, high] * 8
    answers = concurrently([lambda t=t: yolo_server.score(images[0].read_bytes(), f"?box_score_thresh={t}")
                            for t in thresholds], 16)
    for threshold, answer in zip(thresholds, answers):
        assert answer.status == 200
        assert_same_boxes(answer.body, expected[threshold])


# --- the batcher and the R-CNN limits, in process --------------------------------------------------------


def test_the_batcher_gathers_requests_of_equal_settings_up_to_the_batch_size():
    forwards: list[tuple[list[bytes], dict]] = []

    def score(images, settings):
        forwards.append((list(images), dict(settings)))
        time.sleep(0.01)
        return [image + b"!" for image in images]

    async def scenario():
        batcher = DynamicBatcher(score, max_batch_size=4, max_wait_ms=50)
        batcher.start()
        requests = [([f"{i}".encode()] * (1 + i % 2), {"t": i % 3}) for i in range(12)]
        requests.append(([b"big"] * 6, {"t": 0}))
        answers = await asyncio.gather(*(batcher.submit(images, settings, str(settings["t"]))
                                         for images, settings in requests))
        await batcher.stop()
        return requests, answers, batcher.counts

    requests, answers, counts = asyncio.run(scenario())
    for (images, _), answer in zip(requests, answers):
        assert answer.answers == [image + b"!" for image in images]
    for images, settings in forwards:  # never mixed, never over the size but for the one request of 6
        assert len(images) <= 4 or images == [b"big"] * 6
        assert all(int(image.decode()) % 3 == settings["t"] for image in images if image != b"big")
    assert counts.requests == 13 and counts.images == sum(len(images) for images, _ in requests)
    assert counts.forwards == len(forwards) < 13


def test_the_batcher_answers_a_failed_forward_with_its_error_and_goes_on():
    def score(images, settings):
        if settings.get("fail"):
            raise ValueError("broken")
        return list(images)

    async def scenario():
        batcher = DynamicBatcher(score, max_batch_size=8, max_wait_ms=0)
        batcher.start()
        failed = await asyncio.gather(batcher.submit([b"a"], {"fail": True}, "fail"), return_exceptions=True)
        fine = await batcher.submit([b"b"], {}, "")
        await batcher.stop()
        return failed, fine

    failed, fine = asyncio.run(scenario())
    assert isinstance(failed[0], ValueError) and fine.answers == [b"b"] and fine.batch_size == 1


@pytest.mark.parametrize("model_name", ["fasterrcnn_resnet18_fpn", "retinanet_resnet50_fpn"])
def test_rcnn_prediction_limits_apply_without_changing_the_model(model_name):
    model = create_model(model_name, 2, pretrained=False, min_size=64, max_size=96).eval()
    holder = model if model_name.startswith("retinanet") else model.roi_heads
    before = (holder.score_thresh, holder.nms_thresh, holder.detections_per_img)
    same = with_prediction_limits(model, box_score_thresh=before[0], nms_iou_thresh=before[1],
                                  box_detections_per_img=before[2])
    assert same is model
    limited = with_prediction_limits(model, box_score_thresh=0.9, nms_iou_thresh=0.1, box_detections_per_img=2)
    limited_holder = limited if model_name.startswith("retinanet") else limited.roi_heads
    assert (limited_holder.score_thresh, limited_holder.nms_thresh, limited_holder.detections_per_img) == (0.9, 0.1, 2)
    assert (holder.score_thresh, holder.nms_thresh, holder.detections_per_img) == before
    assert (model if model_name.startswith("retinanet") else model.roi_heads) is holder
    assert all(a is b for a, b in zip(limited.parameters(), model.parameters()))
    with torch.no_grad():
        images = [torch.rand(3, 64, 96)]
        assert all(len(found["boxes"]) <= 2 for found in limited(images))


# --- start-up errors, in process --------------------------------------------------------------------------


def test_start_up_errors_exit_2_naming_the_problem(classifier, capsys, monkeypatch):
    run_dir, _ = classifier
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    assert main(["serve", str(run_dir), "--api-key-env", KEY_VARIABLE]) == 2
    assert f"the environment variable {KEY_VARIABLE} is not set" in capsys.readouterr().err
    monkeypatch.setenv(KEY_VARIABLE, "")
    assert main(["serve", str(run_dir), "--api-key-env", KEY_VARIABLE, "--port", "0", "--max-batch-size", "0",
                 "--max-wait-ms", "-1", "--workers", "0", "--max-body-mb", "0"]) == 2
    err = capsys.readouterr().err
    for problem in (f"{KEY_VARIABLE} is empty", "port: got 0", "max_batch_size: got 0", "max_wait_ms: got -1.0",
                    "workers: got 0", "max_body_mb: got 0.0"):
        assert problem in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert main(["serve", str(run_dir), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_a_model_that_cannot_be_loaded_stops_the_server_with_exit_2(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "no-run"), "--port", str(_free_port()), "--log-level", "warning"]) == 2
    assert "error: no trained model at" in capsys.readouterr().err


# --- slow: segmentation, ONNX Runtime, worker processes, SIGTERM ------------------------------------------


@pytest.mark.slow
def test_segmentation_answers_polygons_and_rcnn_thresholds_per_request(tmp_path):
    data = _scenes(tmp_path)
    lines = read_lines(data)
    for line in lines:  # the squares as polygons
        line["label"] = [{"label": item["label"], "isCrowd": 0, "polygon": [[
            item["topX"], item["topY"], item["bottomX"], item["topY"], item["bottomX"], item["bottomY"], item["topX"],
            item["bottomY"]]]} for item in line["label"]]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = visionsweep.train("image_instance_segmentation", data, data, output=tmp_path / "run", progress=False,
                               settings={**RCNN, "model_name": "maskrcnn_resnet18_fpn"})
    images = sorted(tmp_path.glob("*.png"))
    expected = predicted(result.run_dir, images, tmp_path)
    with running_server(result.run_dir, log=tmp_path / "server.log") as server:
        answers = server.score(managed_body([path.read_bytes() for path in images])).body
        assert_same_boxes(answers, expected)
        for answer, line in zip(answers, expected):
            assert [item["polygon"] for item in answer["boxes"]] == [item["polygon"] for item in line["boxes"]]
        assert all(list(item) == ["box", "label", "score", "polygon"] for answer in answers for item in answer["boxes"])
        scores = sorted(item["score"] for item in answers[0]["boxes"])
        threshold = round((scores[0] + scores[-1]) / 2, 6)
        settings = {"box_score_thresh": threshold, "max_number_of_polygon_points": 4}
        fewer = server.score(managed_body([images[0].read_bytes()], parameters=settings)).body
        assert 0 < len(fewer[0]["boxes"]) < len(answers[0]["boxes"])
        assert_same_boxes(fewer, predicted(result.run_dir, images[:1], tmp_path, settings=settings))


@pytest.mark.slow
def test_onnxruntime_serves_what_predict_writes_with_onnxruntime(classifier, tmp_path):
    run_dir, images = classifier
    expected = predicted(run_dir, images[:4], tmp_path, runtime="onnxruntime")
    with running_server(run_dir, "--runtime", "onnxruntime", log=tmp_path / "server.log") as server:
        assert server.request("GET", "/ready").body["runtime"] == "onnxruntime"
        answers = concurrently([lambda path=path: server.score(path.read_bytes()) for path in images[:4]], 4)
        assert_same_probs([answer.body[0] for answer in answers], expected)
        assert_same_probs(server.score(managed_body([path.read_bytes() for path in images[:4]])).body, expected)
        explained = server.score(managed_body([images[0].read_bytes()], parameters={"model_explainability": True}))
        assert explained.status == 422 and "the onnxruntime runtime runs only the exported ONNX graph" in \
            explained.body["error"]


@pytest.mark.slow
def test_worker_processes_each_load_the_model_and_stop_on_sigterm(classifier, tmp_path):
    run_dir, images = classifier
    with running_server(run_dir, "--workers", "2", log=tmp_path / "server.log") as server:
        deadline = time.monotonic() + READY_TIMEOUT  # the second worker may still be loading
        while server.log_text().count("ready: resnet18") < 2 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert server.log_text().count("Started server process") == 2
        assert server.log_text().count("ready: resnet18") == 2
        answers = concurrently([lambda path=path: server.score(path.read_bytes()) for path in images], 6)
        assert [answer.status for answer in answers] == [200] * len(images)
        assert stop(server.process) == 0


@pytest.mark.slow
def test_sigterm_answers_the_requests_in_flight_then_exits_0(classifier, tmp_path):
    run_dir, images = classifier
    # Requests wait up to 3 s for others to join their forward: they are surely in flight at the SIGTERM.
    with running_server(run_dir, "--max-batch-size", "64", "--max-wait-ms", "3000",
                        log=tmp_path / "server.log") as server:
        with ThreadPoolExecutor(max_workers=8) as pool:
            started = time.monotonic()
            futures = [pool.submit(server.score, path.read_bytes()) for path in images[:8]]
            time.sleep(1.0)
            assert not any(future.done() for future in futures)
            server.process.send_signal(signal.SIGTERM)
            answers = [future.result(timeout=REQUEST_TIMEOUT) for future in futures]
        assert [answer.status for answer in answers] == [200] * 8
        assert all(int(answer.headers["X-Batch-Size"]) == 8 for answer in answers)
        assert server.process.wait(timeout=STOP_TIMEOUT) == 0
        assert time.monotonic() - started < STOP_TIMEOUT
        log = server.log_text()
        assert "Shutting down" in log and "Finished server process" in log and "Traceback" not in log
        with pytest.raises(OSError):  # nothing listens there any more
            server.request("GET", "/health", timeout=5)
