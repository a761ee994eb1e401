"""Flow matching (rectified flow): the one place ViLearn's convention is written down.

Convention (hy3dgen's, so Hunyuan3D-2 denoisers sample correctly with it):

- time t in [0, 1] runs from noise to data: t = 0 is pure noise eps ~ N(0, I), t = 1 is a
  normalised latent x (see ``LatentStats``);
- the path is the straight line  x_t = (1 - t) * eps + t * x;
- the model predicts the velocity  v = dx_t/dt = x - eps  (trained with MSE);
- sampling integrates dx/dt = v(x, t) from t = 0 to t = 1 (Euler: x += (t_next - t) * v).

The noise level is sigma = 1 - t. Timestep densities and the ``shift`` act on sigma as in SD3
(Esser et al. 2024): sigma' = shift * sigma / (1 + (shift - 1) * sigma); shift > 1 spends more
time at high noise. hy3dgen's scheduler ``shift`` s acts on t instead and equals our 1 / s.
The network sees t itself (it scales it by 1000 inside its timestep embedding).
"""

from vilearn.flow.normalize import LatentStats
from vilearn.flow.objective import FlowLoss, flow_matching_loss, interpolate, velocity_target
from vilearn.flow.pipeline import generate_latents
from vilearn.flow.sampling import cfg_velocity, euler_sample, sample_latents, time_grid
from vilearn.flow.timesteps import TimestepConfig, sample_timesteps, shift_sigma

__all__ = [
    "FlowLoss",
    "LatentStats",
    "TimestepConfig",
    "cfg_velocity",
    "euler_sample",
    "flow_matching_loss",
    "generate_latents",
    "interpolate",
    "sample_latents",
    "sample_timesteps",
    "shift_sigma",
    "time_grid",
    "velocity_target",
]
