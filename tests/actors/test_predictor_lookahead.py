"""The predictor's look-ahead (a replay): step t+1's features and models start while step t
goes down the chain. It must change nothing but the timing: the same outputs bit for bit,
models swapped between the look-ahead and its step run again, never a step ahead when a
seal (the actors' state) follows, and the inference thread hands back errors."""

from __future__ import annotations

import pickle

import pytest
import trio

from qtraderd.actors.predictor import PredictorActor
from qtraderd.core.messages import replace
from qtraderd.models.inference_thread import InferenceThread
from qtraderd.models.modelset import ModelSet
from qtraderd.models.onnx_model import load_champions
from tests.actors.test_predictor import B, real_steps


def _pair(models: ModelSet) -> tuple[PredictorActor, PredictorActor,
                                      trio.MemorySendChannel]:
    """(plain, looking ahead, the feed's side of the look-ahead channel)."""
    out_tx, out_rx = trio.open_memory_channel(10_000)
    plain = PredictorActor(B, models, out_rx, out_tx)
    ahead_tx, ahead_rx = trio.open_memory_channel(2)
    return plain, PredictorActor(B, models, out_rx, out_tx, ahead=ahead_rx), ahead_tx


def _strip(step):
    """What a step carries out of the predictor (the inputs are the same objects)."""
    return (step.samples, step.outcomes, step.scored, step.model_outputs, step.predictions,
            step.global_regime)


def test_looking_ahead_gives_the_same_bits_and_waits_before_a_seal(trained) -> None:
    models, errors = load_champions(trained["models"])
    assert not errors
    plain, ahead, feed = _pair(ModelSet(dict(models)))
    steps = real_steps()
    # every 50th step ends with a checkpoint: no look-ahead after it
    steps = [replace(s, seal_follows=(i % 50 == 49)) for i, s in enumerate(steps)]
    predicted = 0
    for i, step in enumerate(steps):
        if i + 1 < len(steps):
            feed.send_nowait(steps[i + 1])  # the feed hands t+1 over once t is taken
        a = ahead.handle(step)
        assert _strip(a) == _strip(plain.handle(step)), f"step {step.seq} differs"
        predicted += len(a.predictions)
        if step.seal_follows:  # what the seal collects is the state after this step
            assert pickle.dumps(ahead.export_state()) == pickle.dumps(plain.export_state())
    n_seals = sum(s.seal_follows for s in steps)
    assert ahead.looked_ahead == len(steps) - 1 - n_seals
    assert predicted > 1000
    ahead.close_worker()


def test_state_is_refused_while_a_step_ahead(trained) -> None:
    models, _ = load_champions(trained["models"])
    _, ahead, feed = _pair(ModelSet(dict(models)))
    steps = real_steps(n=3)
    feed.send_nowait(steps[1])
    ahead.handle(steps[0])
    assert ahead.looked_ahead == 1
    with pytest.raises(RuntimeError, match="seal_follows"):
        ahead.export_state()
    ahead.handle(steps[1])
    ahead.export_state()  # nothing ahead any more
    ahead.close_worker()


def test_models_swapped_after_the_look_ahead_run_again(trained) -> None:
    models, _ = load_champions(trained["models"])
    full = ModelSet(dict(models))
    one = ModelSet({f: m for f, m in models.items() if f == "lightgbm"})
    assert len(one.serving) == 1 < len(full.serving)
    plain, ahead, feed = _pair(full)
    steps = real_steps()
    swap_at = len(steps) - 300
    predicted_after_swap = 0
    for i, step in enumerate(steps):
        if i + 1 < len(steps):
            feed.send_nowait(steps[i + 1])
        if i == swap_at:  # staged after the look-ahead at this step started the old set
            plain.stage(one)
            ahead.stage(one)
        a, p = ahead.handle(step), plain.handle(step)
        assert _strip(a) == _strip(p), f"step {step.seq} differs"
        if i > swap_at and a.model_outputs:
            assert [o.model for o in a.model_outputs] == ["lightgbm"]
            predicted_after_swap += 1
    assert predicted_after_swap > 0
    ahead.close_worker()


def test_inference_thread_returns_results_and_raises_errors() -> None:
    t = InferenceThread("test")
    t.submit(lambda: 41 + 1)
    with pytest.raises(RuntimeError, match="not collected"):
        t.submit(lambda: 0)
    assert t.result() == 42
    with pytest.raises(RuntimeError, match="no job"):
        t.result()

    def boom() -> None:
        raise ValueError("bad input shape")

    t.submit(boom)
    with pytest.raises(ValueError, match="bad input shape"):
        t.result()
    t.submit(lambda: 1)
    t.close()  # collects the running job, then the thread ends
    assert not t._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        t.submit(lambda: 2)
