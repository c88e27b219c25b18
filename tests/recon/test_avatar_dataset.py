"""Zero-1-to-A's pseudo-GT clips: refreshes on schedule, never a stale clip served, resume keeps ages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.cameras import orbit_cameras
from recon.data.avatar_dataset import (
    ClipSpec,
    PseudoGTClips,
    curriculum_stage,
    expression_intensity,
    partial_denoise_clip,
    spatial_azimuths,
    spatial_extent_deg,
    temporal_expressions,
)
from recon.errors import UserError

torch.set_num_threads(1)
T, E, S = 4, 6, 8


class Recorder:
    """A ``make_clip`` that records its calls and makes frames from the generator."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.step = 0

    def __call__(self, key, spec, previous, generator):
        self.calls.append((key, self.step))
        return torch.rand(spec.num_frames, S, S, 3, generator=generator)


def spec(stage="spatial", refresh_every=None):
    cams = orbit_cameras(T, elevation_deg=0.0, distance=0.6, fov_deg=25.0, width=S, height=S)
    return ClipSpec(cams, torch.zeros(T, E), refresh_every=refresh_every, stage=stage)


def store(seed=0, refresh_every=30):
    rec = Recorder()
    clips = PseudoGTClips(rec, refresh_every=refresh_every, seed=seed)
    clips.add("front-left", spec())
    clips.add("front-right", spec())
    clips.add("smile", spec("temporal", refresh_every=10))
    return clips, rec


def serve(clips, rec, steps, stage=None):
    served = []
    for step in steps:
        rec.step = step
        clip = clips.sample(step, stage)
        served.append((step, clip.key, clip.age(step), clip.generation))
    return served


def test_refreshes_happen_on_schedule_and_no_stale_clip_is_served():
    clips, rec = store()
    served = serve(clips, rec, range(200))
    for _, key, age, _ in served:
        assert 0 <= age < clips.interval(key)  # never a clip as old as its refresh interval
    for key in clips.keys():
        made = [s for k, s in rec.calls if k == key]
        asked = [s for s, k, _, _ in served if k == key]
        assert made[0] == asked[0]  # made when first asked for
        for a, b in zip(made, made[1:]):  # remade at the first request at or past the interval, not before
            assert b == min(s for s in asked if s >= a + clips.interval(key))
    made_smile = [s for k, s in rec.calls if k == "smile"]
    assert len(made_smile) > len([s for k, s in rec.calls if k == "front-left"])  # a shorter interval: more


def test_get_regenerates_at_exactly_the_interval():
    clips, rec = store(refresh_every=5)
    for step in range(0, 12):
        rec.step = step
        clips.get("front-left", step)
    assert [s for k, s in rec.calls] == [0, 5, 10]
    assert clips.clips["front-left"].generation == 2
    rec.step = 3  # a step before the clip was made (an older checkpoint's step): the clip is remade
    assert clips.get("front-left", 3).made_at == 3 and rec.calls[-1] == ("front-left", 3)


def test_same_seed_same_clips_and_sampling():
    a, ra = store(seed=7)
    b, rb = store(seed=7)
    c, rc = store(seed=8)
    sa, sb, sc = serve(a, ra, range(60)), serve(b, rb, range(60)), serve(c, rc, range(60))
    assert sa == sb and sa != sc
    for key in a.keys():
        assert torch.equal(a.clips[key].frames, b.clips[key].frames)
        assert not torch.equal(a.clips[key].frames, c.clips[key].frames)


def test_resume_keeps_ages_and_generations(tmp_path):
    clips, rec = store(seed=3)
    serve(clips, rec, range(45))
    torch.save(clips.state_dict(), tmp_path / "clips.pt")
    made_at = {k: c.made_at for k, c in clips.clips.items()}
    reference = serve(clips, rec, range(45, 100))
    ref_calls = list(rec.calls)

    resumed_rec = Recorder()
    resumed = PseudoGTClips(resumed_rec, refresh_every=1, seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "clips.pt", weights_only=False))
    assert resumed.refresh_every == 30 and resumed.seed == 3 and resumed.interval("smile") == 10
    assert {k: c.made_at for k, c in resumed.clips.items()} == made_at  # the ages go on where they were
    assert serve(resumed, resumed_rec, range(45, 100)) == reference  # same ages, same refreshes, same draws
    assert resumed_rec.calls == [c for c in ref_calls if c[1] >= 45][: len(resumed_rec.calls)]
    assert len(resumed_rec.calls) == len([c for c in ref_calls if c[1] >= 45])
    for key in clips.keys():
        assert torch.equal(resumed.clips[key].frames, clips.clips[key].frames)


def test_stage_filter_and_bad_input():
    clips, rec = store()
    assert {k for _, k, _, _ in serve(clips, rec, range(40), stage="temporal")} == {"smile"}
    with pytest.raises(KeyError):
        clips.sample(0, "nope")
    with pytest.raises(UserError, match="refresh_every"):
        PseudoGTClips(Recorder(), refresh_every=0)
    with pytest.raises(UserError, match="one expression row per camera"):
        ClipSpec(spec().cameras, torch.zeros(T + 1, E))


def test_partial_denoise_clip_composes_render_and_denoise():
    rendered = torch.full((T, S, S, 3), 0.5)
    make = partial_denoise_clip(
        lambda s: rendered, lambda x, strength, g: x + strength * torch.randn(x.shape, generator=g), 0.2
    )
    clips = PseudoGTClips(make, refresh_every=3, seed=1)
    clips.add("a", spec())
    frames = clips.get("a", 0).frames
    assert frames.shape == (T, S, S, 3) and 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert 0.15 < float((frames - rendered).std()) < 0.25  # the noise the denoiser was given, clamped


def test_spatial_curriculum_widens_from_front_to_side():
    n, d = 5, 100
    assert np.all(spatial_azimuths(0, n, 90.0, d) == 0.0)  # step 0: every frame frontal
    assert np.allclose(spatial_azimuths(10_000, n, 90.0, d), [0, 22.5, 45, 67.5, 90])  # the full path
    assert spatial_azimuths(150, n, 90.0, d).tolist() == [0, 22.5, 22.5, 22.5, 22.5]  # j = 2
    prev = spatial_azimuths(0, n, 90.0, d)
    for step in range(0, 700, 7):
        cur = spatial_azimuths(step, n, 90.0, d)
        assert np.all(cur >= prev) and np.all(
            np.diff(cur) >= 0
        )  # widening over steps, front to side in a clip
        prev = cur
    extents = [spatial_extent_deg(k, n, 90.0, d) for k in range(0, 600, 50)]
    assert extents[0] == 0.0 and extents[-1] == 90.0 and extents == sorted(extents)
    assert spatial_extent_deg(399, n, 90.0, d) == 67.5 and spatial_extent_deg(400, n, 90.0, d) == 90.0


def test_temporal_curriculum_goes_from_relaxed_to_exaggerated():
    assert expression_intensity(0.0) == pytest.approx(0.3) and expression_intensity(1.0) == pytest.approx(1.5)
    assert expression_intensity(-1.0) == pytest.approx(0.3) and expression_intensity(2.0) == pytest.approx(
        1.5
    )
    values = [expression_intensity(p) for p in np.linspace(0, 1, 101)]
    assert all(b > a for a, b in zip(values, values[1:]))  # strictly rising
    seq = torch.rand(T, E)
    assert torch.allclose(temporal_expressions(seq, 1.0), 1.5 * seq)
    assert curriculum_stage(4999, 5000) == "spatial" and curriculum_stage(5000, 5000) == "temporal"


def test_a_replaced_signal_keeps_its_clip_until_stale_and_resumes_with_it(tmp_path):
    """``add(keep=True)`` (the widening spatial path): the old clip, with the signal it was made from, is
    served until its interval is up, then the clip is made from the new signal; a resume keeps both."""
    clips, rec = store()
    rec.step = 0
    first = clips.get("front-left", 0)
    wider = spec()
    wider.expressions = torch.ones(T, E)
    clips.add("front-left", wider, keep=True)
    rec.step = 29
    kept = clips.get("front-left", 29)
    assert kept.generation == first.generation and torch.equal(kept.spec.expressions, torch.zeros(T, E))
    path = tmp_path / "clips.pt"
    torch.save(clips.state_dict(), path)
    again = PseudoGTClips(rec, refresh_every=30)
    again.load_state_dict(torch.load(path, weights_only=False))
    assert torch.equal(again.clips["front-left"].spec.expressions, torch.zeros(T, E))
    assert torch.equal(again.specs["front-left"].expressions, torch.ones(T, E))
    rec.step = 30
    remade = again.get("front-left", 30)
    assert remade.generation == first.generation + 1 and torch.equal(
        remade.spec.expressions, torch.ones(T, E)
    )
    clips.add("front-left", wider)  # without keep: dropped at once
    assert "front-left" not in clips.clips
