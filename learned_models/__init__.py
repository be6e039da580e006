"""World models: certified stable dynamics (Manek & Kolter 2019), the MLP baseline, LyaNet
(Rodriguez et al. 2022), the video VAE, and the ``Certificate`` objects stating what each
model guarantees. Imports nothing else from lyagym."""

from .certificate import CLAIMS, EVIDENCE, Certificate, weights_hash
from .world_model import WorldModel, check_world_model, rollout

# --- stable dynamics (issue 3): icnn, lyapunov, stable, simple, training, falsification ---

# --- LyaNet (issue 4) ---

# --- video VAE (issue 6) ---
