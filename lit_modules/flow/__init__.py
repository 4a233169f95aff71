"""Flow matching (Lipman et al. 2023) with the linear path of rectified flow (Liu et al. 2023) as small pure
functions and ODE samplers for any velocity callable. Knows nothing of Lightning, configs or files."""

from lit_modules.flow import samplers as _samplers
from lit_modules.flow.samplers import *  # noqa: F403  (the names in samplers.__all__)

__all__ = list(_samplers.__all__)
