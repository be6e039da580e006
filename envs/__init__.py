"""Gymnasium environments: the sympy-derived n-link pendulum (single and batched torch
vector env) and video textures. Importing this module registers ``lyagym/NLinkPendulum-v0``
(and ``lyagym/VideoTexture-v0``)."""

# --- pendulum dynamics and datasets (issue 2) ---

# --- pendulum environments and registration (issue 2) ---

# --- video texture (issue 6) ---
