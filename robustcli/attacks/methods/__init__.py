"""Attack methods: every attack as one call that returns, per sample, its smallest adversarial.

An ``AttackMethod`` takes a batch of clean images ``x`` (``[0, 1]`` pixels, NCHW) with labels ``y``
and returns one candidate per image (``x`` itself where it found nothing). It talks to the model
only through an ``AttackContext`` (see ``robustcli.attacks.target``), which hands out Foolbox
models bound to a subset of the batch: a branch attack needs the clean image of each row it
evaluates, so a method that attacks only some rows must ask for a model of those rows.

Foolbox gives two kinds of attacks; paper B's curve needs the smallest successful L2 per sample:

- minimization attacks (DDN, C&W, DeepFool, FMN, salt-and-pepper, contrast) return it
  directly: ``FoolboxMinimization`` calls their ``run`` (the unclipped result);
- ``GaussianBlurSearch`` and ``BlendedNoiseSearch`` run Foolbox's blur and blended-noise searches
  but stop evaluating an image once it is done (Foolbox classifies the whole batch at every step
  until the last image is fooled), and evaluate several steps per model call once few images are
  left, so that the calls stay full;
- fixed-epsilon attacks (additive noise, PGD) return an adversarial *within* a given epsilon:
  ``EpsilonSearch`` turns them into minimization attacks by a search over a geometric epsilon
  grid, then bisection on each sample's bracket;
- ``PointwiseSearch`` runs Foolbox's Pointwise algorithm on the rows its salt-and-pepper start
  fooled (Foolbox asserts that every starting point is adversarial and crashes otherwise),
  classifying only the rows still being worked on;
- ``MinimalSpatial`` scans Foolbox's SpatialAttack grid of rotations and translations and keeps,
  per sample, the fooling transform of smallest induced L2 (Foolbox keeps the first one found).

The caller (``robustcli.attacks.runner``) re-verifies and re-measures whatever comes back.

Modules: ``base`` (the interface, Foolbox's minimization attacks, shared helpers), ``epsilon``
(fixed-epsilon attacks as searches), ``sparse`` (salt-and-pepper, Pointwise), ``linear`` (blur,
blended noise, spatial grid).
"""

from robustcli.attacks.methods.base import (
    AttackContext,
    AttackMethod,
    FoolboxMinimization,
    check_params,
    first_success,
    geometric_grid,
    l2_norms,
    steps_per_call,
)
from robustcli.attacks.methods.epsilon import EpsilonSearch, L2PGDPerSample, noise_draw
from robustcli.attacks.methods.linear import (
    BlendedNoiseSearch,
    GaussianBlurSearch,
    MinimalSpatial,
    gaussian_blur,
    gaussian_matrix,
    reflect_index,
)
from robustcli.attacks.methods.sparse import PointwiseSearch, SaltAndPepperSearch

__all__ = [
    "AttackContext",
    "AttackMethod",
    "BlendedNoiseSearch",
    "EpsilonSearch",
    "FoolboxMinimization",
    "GaussianBlurSearch",
    "L2PGDPerSample",
    "MinimalSpatial",
    "PointwiseSearch",
    "SaltAndPepperSearch",
    "check_params",
    "first_success",
    "gaussian_blur",
    "gaussian_matrix",
    "geometric_grid",
    "l2_norms",
    "noise_draw",
    "reflect_index",
    "steps_per_call",
]
