"""Video textures: data generators and loaders, the VAE with latent dynamics, its
checkpoints, the VideoTexture environments, and 2-process DDP training."""

from __future__ import annotations

import importlib.util
import os
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

import lyagym.envs  # noqa: F401  (registers the envs)
from lyagym.envs.video_data import TEXTURES, load_frames, make_texture, write_video
from lyagym.envs.video_texture import DEFAULT_CHECKPOINT, VideoTextureEnv, VideoTextureVectorEnv
from lyagym.learned_models import VideoVAE, fit_video

TINY = dict(channels=(8, 16), dynamics_kwargs={"hidden": (32,), "lyap_hidden": (16,)})


def tiny_model(dynamics="stable", size=16, latent=6, **kw) -> VideoVAE:
    torch.manual_seed(0)
    kwargs = dict(TINY)
    kwargs["dynamics_kwargs"] = dict(TINY["dynamics_kwargs"]) if dynamics == "stable" else {"hidden": (32,)}
    kwargs.update(kw)
    return VideoVAE(size, latent, dynamics=dynamics, **kwargs)


@pytest.fixture(scope="module")
def clip():
    return make_texture("clouds", n_frames=24, size=16, seed=0)


@pytest.fixture(scope="module")
def trained(clip, tmp_path_factory):
    """A tiny stable model trained a little, with reference frames, saved to disk."""
    torch.set_num_threads(1)
    model = tiny_model(label_names=["clouds", "fire"])
    fire = make_texture("fire", n_frames=24, size=16, seed=1)
    fit_video(model, [clip, fire], epochs=6, batch_size=8, lr=3e-3, progress=False)
    model.set_reference_frames(np.concatenate([clip[::4], fire[::4]]), [0] * 6 + [1] * 6)
    path = tmp_path_factory.mktemp("video") / "tiny.pt"
    model.save(path, metadata={"note": "test"})
    return model, path


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize("kind", ["fire", "water", "clouds"])
def test_textures_shapes_ranges_and_seeding(kind):
    a = make_texture(kind, n_frames=12, size=(16, 24), seed=3)
    assert a.shape == (12, 16, 24, 3) and a.dtype == np.uint8
    assert a.std() > 10  # real structure, not a flat colour
    assert np.abs(np.diff(a.astype(np.int16), axis=0)).mean() > 0.5  # it moves
    np.testing.assert_array_equal(a, make_texture(kind, n_frames=12, size=(16, 24), seed=3))
    assert not np.array_equal(a, make_texture(kind, n_frames=12, size=(16, 24), seed=4))


def test_texture_loops_seamlessly():
    frames = make_texture("fire", n_frames=20, size=16, period=8, seed=0)
    # every temporal frequency completes whole cycles per period: frame t + period == frame t
    np.testing.assert_allclose(frames[8].astype(int), frames[0].astype(int), atol=1)
    np.testing.assert_allclose(frames[17].astype(int), frames[9].astype(int), atol=1)


def test_pendulum_texture():
    pytest.importorskip("lyagym.envs.dynamics")
    frames = make_texture("pendulum", n_frames=6, size=16, seed=0, n_links=2)
    assert frames.shape == (6, 16, 16, 3) and frames.dtype == np.uint8
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).max() > 0  # the chain swings


def test_texture_argument_errors():
    with pytest.raises(ValueError, match="kind"):
        make_texture("lava")
    with pytest.raises(ValueError, match="n_frames"):
        make_texture("fire", n_frames=1)
    with pytest.raises(ValueError, match="size"):
        make_texture("fire", size=4)
    with pytest.raises(TypeError, match="n_links"):
        make_texture("fire", n_links=3)
    assert set(TEXTURES) >= {"fire", "water", "clouds", "pendulum"}


def test_load_folder_and_gif_roundtrip(tmp_path, clip):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(clip[:12]):  # natural sort: frame2 before frame10
        Image.fromarray(f).save(folder / f"frame{i}.png")
    np.testing.assert_array_equal(load_frames(folder), clip[:12])
    assert load_frames(folder, size=8, max_frames=5).shape == (5, 8, 8, 3)
    gif = write_video(clip[:5], tmp_path / "clip.gif")
    loaded = load_frames(gif)
    assert loaded.shape == (5, 16, 16, 3)
    assert np.abs(loaded.astype(int) - clip[:5].astype(int)).mean() < 20  # GIF palette loss only


def test_load_errors(tmp_path, clip):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_frames(tmp_path / "nope")
    unreadable = tmp_path / "bad"
    unreadable.mkdir()
    Image.fromarray(clip[0]).save(unreadable / "a.png")
    (unreadable / "b.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="could not read image"):
        load_frames(unreadable)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(clip[0]).save(mixed / "a.png")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="mixed sizes"):
        load_frames(mixed)
    assert load_frames(mixed, size=16).shape == (2, 16, 16, 3)  # resizing fixes it
    few = tmp_path / "few"
    few.mkdir()
    Image.fromarray(clip[0]).save(few / "a.png")
    with pytest.raises(ValueError, match="at least min_frames=2"):
        load_frames(few)
    (tmp_path / "broken.gif").write_bytes(b"GIF89a garbage")
    with pytest.raises(ValueError, match="could not read video"):
        load_frames(tmp_path / "broken.gif")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    if importlib.util.find_spec("imageio") is None:
        with pytest.raises(ImportError, match="imageio"):
            load_frames(tmp_path / "clip.mp4")
    else:
        with pytest.raises(ValueError, match="could not read video"):
            load_frames(tmp_path / "clip.mp4")


# ----------------------------------------------------------------------------- model
def test_vae_shapes_and_full_output_range():
    model = tiny_model()
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    frames[2:] = 255
    mean, log_var = model.encode(model.frames_to_tensor(frames))
    assert mean.shape == log_var.shape == (4, 6)
    # the decoder's last layer is free: it can put out (almost) 0 and 1, not just >= 0.5 (2019)
    last = model.decoder.convs[-1]
    with torch.no_grad():
        saved = last.bias.clone()
        for bias, check in ((-12.0, lambda y: y.max() < 1e-4), (12.0, lambda y: y.min() > 1 - 1e-4)):
            last.weight.mul_(0.0)
            last.bias.fill_(bias)
            y = model.decode(torch.randn(3, 6))
            assert check(y), (bias, float(y.min()), float(y.max()))
            assert model.tensor_to_frames(y).unique().numel() == 1  # rounds to exactly 0 or 255
        last.bias.copy_(saved)
    out = model.decode(model.encode_frames(frames))
    assert out.shape == (4, 3, 16, 16)
    video = model.generate(frames[:2], steps=7)
    assert video.shape == (2, 8, 16, 16, 3) and video.dtype == torch.uint8


def test_round_trip_improves_with_training(clip):
    model = tiny_model()
    y = model.frames_to_tensor(clip)

    def mse():
        with torch.no_grad():
            return float((model.decode(model.encode(y)[0]) - y).square().mean())

    before = mse()
    history = fit_video(model, clip, epochs=15, batch_size=8, lr=3e-3, progress=False)
    after = mse()
    assert after < 0.5 * before
    assert history["loss"][-1] < history["loss"][0]
    assert all(np.isfinite(history[k]).all() for k in ("loss", "kl", "recon", "pred"))


def test_stable_latent_rollout_keeps_V_non_increasing(trained, clip):
    model, _ = trained
    V = model.dynamics.lyapunov
    z0 = torch.cat([model.encode_frames(clip[:4]), 4.0 * torch.randn(28, model.latent_dim, generator=torch.Generator().manual_seed(0))])
    with torch.no_grad():
        zs = model.rollout_latent(z0, 60)
        v = V(zs.reshape(-1, model.latent_dim)).reshape(zs.shape[:2])
    assert torch.isfinite(v).all()
    assert (v[:, 1:] <= v[:, :-1] * (1 + 1e-5) + 1e-7).all()  # the discrete guarantee of StableDynamics
    assert (v[:, -1] < v[:, 0]).all()


def test_eq21_loss_terms(clip):
    model = tiny_model(latent_weight=0.5, level_weight=2.0)
    y = model.frames_to_tensor(clip[:8])
    out = model(y[:-1], y[1:])
    assert set(out) >= {"loss", "kl", "recon", "pred", "latent", "level"}
    assert out["level"] > 0 and out["latent"] > 0
    n = y[0].numel()
    expected = model.kl_weight * out["kl"] + n * (out["recon"] + out["pred"]) + 0.5 * out["latent"] + 2.0 * out["level"]
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-4, atol=1e-3)
    # K-step prediction: frames t+1..t+3 for each t
    out3 = model(y[:-3], torch.stack([y[1:-2], y[2:-1], y[3:]], 1))
    assert torch.isfinite(out3["loss"]) and out3["pred"] > 0
    with pytest.raises(ValueError, match="predict_from"):
        tiny_model(predict_from="future")
    with pytest.raises(ValueError, match="dynamics"):
        tiny_model(dynamics="chaotic")
    with pytest.raises(ValueError, match="uint8 frames"):
        model.frames_to_tensor(np.zeros((2, 8, 8, 3), np.uint8))


def test_checkpoint_round_trip_and_errors(trained, tmp_path, clip):
    model, path = trained
    loaded = VideoVAE.load(path)
    assert loaded.metadata == {"note": "test"} and loaded.config() == model.config()
    torch.testing.assert_close(loaded.reference_latents, model.reference_latents)
    np.testing.assert_array_equal(loaded.generate(clip[:2], 5).numpy(), model.generate(clip[:2], 5).numpy())
    with pytest.raises(FileNotFoundError):
        VideoVAE.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="directory"):
        VideoVAE.load(tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable video VAE checkpoint"):
        VideoVAE.load(tmp_path / "garbage.pt")
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable video VAE checkpoint"):
        VideoVAE.load(tmp_path / "truncated.pt")
    torch.save({"format": "something-else", "weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a video VAE checkpoint"):
        VideoVAE.load(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["latent_dim"] = 7
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not match"):
        VideoVAE.load(tmp_path / "mismatch.pt")
    # saving is atomic and leaves no temp files behind
    model.save(tmp_path / "again.pt")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------- environments
def test_env_passes_checkers(trained):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    _, path = trained
    env = gym.make("lyagym/VideoTexture-v0", checkpoint=str(path), render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16x16 frames are below CnnPolicy's 36x36: a warning, not an error
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert obs.shape == (16, 16, 3) and obs.dtype == np.uint8 and info["latent"].shape == (6,)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert reward == pytest.approx(-info["distance"]) and reward <= 0 and not terminated
    np.testing.assert_array_equal(env.render(), obs)
    free = VideoTextureEnv(path, task="free")
    free.reset(seed=0)
    assert free.step(free.action_space.sample())[1] == 0.0


def test_env_target_task_and_options(trained):
    model, path = trained
    env = VideoTextureEnv(path, texture="fire", target_index=2)
    _, info = env.reset(seed=0, options={"start_index": 2})
    assert info["distance"] == pytest.approx(0.0, abs=1e-6)  # starting on the target frame
    # steering straight at the target beats doing nothing
    env.reset(seed=0, options={"start_index": 0})
    idle = [env.step(np.zeros(6, np.float32))[1] for _ in range(5)]
    env.reset(seed=0, options={"start_index": 0})
    steer = []
    for _ in range(5):
        direction = env.target_latent.numpy() - env._z[0].numpy()
        steer.append(env.step(np.clip(direction / env.action_scale, -1, 1).astype(np.float32))[1])
    assert sum(steer) > sum(idle)
    with pytest.raises(ValueError, match="texture"):
        VideoTextureEnv(path, texture="lava")
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(6, np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"colour": 1})


def test_env_checkpoint_errors(tmp_path, trained):
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a readable"):
        gym.make("lyagym/VideoTexture-v0", checkpoint=str(tmp_path / "corrupt.pt"))
    with pytest.raises(FileNotFoundError):
        VideoTextureEnv(tmp_path / "missing.pt")
    bare = tiny_model()
    bare.save(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="reference frames"):
        VideoTextureEnv(tmp_path / "bare.pt")


def test_vector_env_matches_single_env_and_autoresets(trained):
    model, path = trained
    n = 5
    envs = gym.make_vec("lyagym/VideoTexture-v0", num_envs=n, vectorization_mode="vector_entry_point",
                        checkpoint=str(path), max_episode_steps=3)
    starts = np.arange(n) % len(model.reference_latents)
    obs, _ = envs.reset(seed=0, options={"start_index": starts})
    assert obs.shape == (n, 16, 16, 3) and obs.dtype == np.uint8
    actions = np.random.default_rng(0).uniform(-1, 1, (3, n, 6)).astype(np.float32)
    single = VideoTextureEnv(path)
    for i in (0, 3):
        o, _ = single.reset(options={"start_index": int(starts[i])})
        np.testing.assert_array_equal(o, obs[i])
    trajectory = []
    for t in range(3):
        obs, reward, terminated, truncated, _ = envs.step(actions[t])
        trajectory.append((obs.copy(), reward.copy(), truncated.copy()))
    for i in (0, 3):
        single.reset(options={"start_index": int(starts[i])})
        for t in range(3):
            o, r, *_ = single.step(actions[t, i])
            assert np.abs(o.astype(int) - trajectory[t][0][i].astype(int)).max() <= 1  # batched vs single decode
            assert r == pytest.approx(float(trajectory[t][1][i]), abs=1e-5)
    assert not trajectory[1][2].any() and trajectory[2][2].all()  # truncated after 3 steps
    obs, reward, terminated, truncated, _ = envs.step(actions[0])  # NEXT_STEP autoreset
    assert (reward == 0).all() and not truncated.any() and not terminated.any()
    tensor_env = VideoTextureVectorEnv(3, path, as_torch=True)
    obs, _ = tensor_env.reset(seed=1)
    assert isinstance(obs, torch.Tensor) and obs.shape == (3, 16, 16, 3) and obs.dtype == torch.uint8


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="default checkpoint not built")
def test_default_checkpoint_works_out_of_the_box():
    assert DEFAULT_CHECKPOINT.stat().st_size < 5 * 2**20  # a few MB at most
    env = gym.make("lyagym/VideoTexture-v0")
    obs, _ = env.reset(seed=0)
    assert obs.ndim == 3 and obs.shape[-1] == 3 and obs.dtype == np.uint8
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
    assert obs.std() > 1  # a picture, not a flat colour


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(100 + rank)  # different initial weights per replica: DDP must sync them
    model = VideoVAE(16, 4, channels=(4, 8), dynamics="stable", dynamics_kwargs={"hidden": (16,), "lyap_hidden": (8,)})
    initial = model.decoder.head.weight.detach().clone()
    history = fit_video(model, make_texture("clouds", n_frames=18, size=16, seed=0), epochs=2, batch_size=4, progress=False)
    torch.save({"state": model.state_dict(), "initial": initial, "history": history}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_keep_replicas_identical(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert not torch.equal(r0["initial"], r1["initial"])  # they really started apart
    for key, value in r0["state"].items():
        torch.testing.assert_close(value, r1["state"][key], rtol=0, atol=0, msg=f"replicas differ in {key}")
    assert not torch.equal(r0["state"]["decoder.head.weight"], r0["initial"])  # and they trained
    assert r0["history"]["world_size"] == 2 and r0["history"]["n_pairs"] == 17
    assert r0["history"]["loss"] == r1["history"]["loss"]  # all-reduced logging
