"""World models: certified stable dynamics (Manek & Kolter 2019), the MLP baseline, LyaNet
(Rodriguez et al. 2022), the video VAE, and the ``Certificate`` objects stating what each
model guarantees. Imports nothing else from lyagym."""

from .certificate import CLAIMS, EVIDENCE, Certificate, model_hash, weights_hash
from .world_model import WorldModel, check_world_model, overflowing_rows_returned, rollout

# --- stable dynamics: icnn, lyapunov, stable, simple, training, falsification ---
from .checkpoint import load_model, save_model
from .icnn import ICNN, smooth_relu
from .integrators import INTEGRATORS, integrate, lyapunov_rescale, odeint
from .lyapunov import LyapunovFunction
from .dynamics_net import DynamicsNet
from .simple import SimpleDynamics
from .stable import StableControlledDynamics, StableDynamics
from .training import fit, fit_settling
from .falsification import FalsificationReport, empirical_certificate, falsify

# --- stabilisability: a learned control Lyapunov function for plants that are not open-loop stable ---
from .control_lyapunov import ControlLyapunov, check_stabilisability

# --- probabilistic ensembles (PETS, Chua et al. 2018): members batched with torch.func.vmap ---
from .ensemble import PROPAGATIONS, Ensemble, EnsembleCertificate, EnsembleCheck, fit_ensemble, fit_ensemble_rollouts, member_factory

# --- LyaNet ---
from . import lyanet
from .lyanet_world_model import LyaNetWorldModel
from .lyapunov_loss import discrete_lyapunov_loss, lyapunov_loss
from .neural_ode import DataControlledMLP, NeuralODE

# --- video VAE ---
from .video_training import fit_video
from .video_vae import VideoVAE

# --- fig5 helper: staged training of stable models (fit V to the data) ---
from .lyapunov_fit import NominalView, fit_lyapunov, init_quadratic, lyapunov_rate_violation, quadratic_lyapunov

# --- formal verification: sound bounds, branch and bound, local and region-of-attraction certificates ---
from .verification import VerificationResult, region_of_attraction, verify_decrease
from .verified_fit import fit_verified
